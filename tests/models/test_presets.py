"""Registry files this package ships: the demo family's stages.yaml and the presets for real families."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.registry import RegistryError, load_registry

MODELS = Path(__file__).resolve().parents[2] / "models"
PRESETS = sorted((MODELS / "presets").glob("*.yaml"))


def test_presets_exist():
    assert {p.name for p in PRESETS} >= {"olmo2-1b.yaml", "smollm2.yaml"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_validates_with_hub_ids_untouched(path, tmp_path):
    registry = load_registry(path, data_dir=tmp_path, check_paths=True)
    for name, stage in registry.stages.items():
        hub_id = stage.model or registry.remote_for(name).tokenizer  # a remote stage: its tokenizer
        assert hub_id and not hub_id.startswith("/")  # a Hub id, not a resolved local path
        assert stage.description


@pytest.mark.parametrize("name", ["olmo2-1b", "smollm2"])
def test_remote_presets_serve_the_same_stages_from_vllm_servers(name, tmp_path):
    local = load_registry(MODELS / "presets" / f"{name}.yaml", data_dir=tmp_path)
    remote = load_registry(MODELS / "presets" / f"{name}-remote.yaml", data_dir=tmp_path)
    assert list(remote.stages) == list(local.stages)
    for stage in remote.stages:
        assert remote.stages[stage].remote is not None
        assert remote.remote_for(stage).tokenizer == local.stages[stage].model  # same checkpoint's tokenizer
        for method in remote.speculative_methods(stage):
            assert method in local.speculative_methods(stage)
            assert remote.remote_for(stage, method).url != remote.remote_for(stage).url  # its own server


def test_olmo2_preset_lists_the_four_training_stages(tmp_path):
    registry = load_registry(MODELS / "presets" / "olmo2-1b.yaml", data_dir=tmp_path)
    assert [s.model for s in registry.stages.values()] == [
        "allenai/OLMo-2-0425-1B",
        "allenai/OLMo-2-0425-1B-SFT",
        "allenai/OLMo-2-0425-1B-DPO",
        "allenai/OLMo-2-0425-1B-Instruct",
    ]


def test_smollm2_drafts_share_the_family(tmp_path):
    registry = load_registry(MODELS / "presets" / "smollm2.yaml", data_dir=tmp_path)
    drafts = {n: registry.speculative_methods(n)["draft_model"]["model"] for n in registry.stages}
    assert drafts == {"base": "HuggingFaceTB/SmolLM2-135M", "instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def test_demo_registry_shape(tmp_path):
    registry = load_registry(MODELS / "stages.yaml", demo_family=tmp_path / "demo", check_paths=False)
    assert list(registry.stages) == ["base", "sft", "dpo", "rlhf"]
    assert registry.parent("sft") == "base" and registry.parent("rlhf") == "sft" and registry.parent("dpo") == "sft"
    assert list(registry.reward_models) == ["rm"]
    assert registry.reward_models["rm"].model == str(tmp_path / "demo" / "rm")
    assert registry.root("rlhf") == "base"
    assert registry.stages["rlhf"].adapter == str(tmp_path / "demo" / "rlhf")
    assert set(registry.speculative_methods("rlhf")) == {"draft_model", "ngram"}
    assert registry.engine["max_model_len"] <= 512


def test_demo_registry_requires_a_built_family(tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        load_registry(MODELS / "stages.yaml", demo_family=tmp_path / "demo", check_paths=True)
