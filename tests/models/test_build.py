"""The smoke build end to end: every stage is produced in a format transformers, PEFT and vLLM load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.demo.build import MARKER, STEPS, build_demo
from models.demo.sft import LORA_TARGETS

pytestmark = pytest.mark.integration  # trains four tiny models: ~15 s on 2 cores

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    out = tmp_path_factory.mktemp("demo")
    return out, build_demo(out, size="smoke")


def _markers(out: Path) -> dict[str, int]:
    return {s: (out / s / MARKER).stat().st_mtime_ns for s in STEPS if (out / s / MARKER).exists()}


def _rebuilt(out: Path, **kwargs) -> list[str]:
    """The steps a build_demo call (re)made, told by their fresh markers."""
    before = _markers(out)
    build_demo(out, size="smoke", **kwargs)
    after = _markers(out)
    return [s for s in STEPS if after[s] != before.get(s)]


def test_every_step_ran_and_left_a_marker(family):
    out, timings = family
    assert set(timings) == {*STEPS, "total"}
    assert timings["total"] >= sum(timings[s] for s in STEPS) > 0
    for name in STEPS:
        assert json.loads((out / name / MARKER).read_text())["size"] == "smoke"
    assert not list(out.glob("*.partial"))


def test_base_and_draft_load_in_transformers_and_share_the_vocabulary(family):
    from transformers import AutoModelForCausalLM

    out, _ = family
    base = AutoModelForCausalLM.from_pretrained(out / "base")
    draft = AutoModelForCausalLM.from_pretrained(out / "draft")
    assert base.config.model_type == draft.config.model_type == "llama"
    assert base.config.vocab_size == draft.config.vocab_size
    for config in (base.config, draft.config):
        assert config.head_dim in (32, 64)  # vLLM's CPU attention supports these
    assert (out / "base" / "model.safetensors").exists()


def test_adapters_are_plain_lora_that_vllm_accepts(family):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = family
    for name in ("sft", "dpo", "rlhf"):
        config = json.loads((out / name / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] <= 16
        assert set(config["target_modules"]) <= set(LORA_TARGETS)
        assert not config.get("modules_to_save")
        assert not (out / name / "ref").exists()  # DPO's frozen reference copy is not shipped
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), out / name)
        assert list(model.peft_config) == ["default"]


def test_reward_model_scores_and_the_rl_round_leaves_its_figures(family):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, _ = family
    rm = AutoModelForSequenceClassification.from_pretrained(out / "rm")
    assert rm.config.num_labels == 1
    figures = json.loads((out / "rm" / "stagechat_demo_rm.json").read_text())
    assert figures["train_pairs"] > 0 and 0.0 <= figures["held_out_accuracy"] <= 1.0
    tok = AutoTokenizer.from_pretrained(out / "rm")
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(rm(input_ids=ids).logits).all()
    rl = json.loads((out / "rlhf" / "stagechat_demo_rl.json").read_text())
    assert {"reward_before", "reward_after", "rows"} <= set(rl) and rl["rows"]
    assert (out / "rlhf" / "training_log.csv").exists() and (out / "rlhf" / "training_curves.png").exists()


def test_chat_template_renders_in_every_stage_dir(family):
    from transformers import AutoTokenizer

    out, _ = family
    for name in ("base", "sft", "dpo", "rlhf", "draft"):
        tok = AutoTokenizer.from_pretrained(out / name)
        ids = tok.apply_chat_template(
            [{"role": "user", "content": "Capital of Kenya?"}, {"role": "assistant", "content": "Nairobi."}],
            return_dict=True,
        )["input_ids"]
        assert ids[-1] == tok.eos_token_id


def test_registry_validates_against_the_built_family(family):
    from server.registry import load_registry

    out, _ = family
    registry = load_registry(MODELS / "stages.yaml", demo_family=out, check_paths=True)
    assert registry.speculative_methods("base")["draft_model"]["model"] == str(out / "draft")
    assert {"base", "sft", "dpo", "rlhf"} <= set(registry.stages)


def test_rerun_skips_complete_steps_and_redoes_an_incomplete_one(family):
    out, _ = family
    (out / "draft" / MARKER).unlink()  # as if the draft step had been interrupted
    assert _rebuilt(out) == ["draft"]
    assert _rebuilt(out) == []


def test_a_rebuilt_step_rebuilds_what_is_made_from_it(family):
    out, _ = family
    (out / "sft" / MARKER).unlink()
    assert _rebuilt(out) == ["sft", "dpo", "rm", "rlhf"]  # the draft is not made from sft
    shutil.rmtree(out / "data")
    assert _rebuilt(out) == list(STEPS)


def test_a_family_from_an_older_recipe_is_rebuilt(family, monkeypatch):
    from models.demo import build

    out, _ = family
    monkeypatch.setattr(build, "RECIPE_VERSION", build.RECIPE_VERSION + 1)
    assert _rebuilt(out) == list(STEPS)


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="size"):
        build_demo(tmp_path, size="huge")
    assert list(tmp_path.iterdir()) == []
