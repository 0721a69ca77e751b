"""The shipped demo family: its manifest matches the recipe, it loads, and it scores as its manifest says."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from models.demo import manifest
from models.demo.build import MARKER, RECIPE_VERSION
from server.registry import load_registry
from server.settings import SHIPPED_DEMO_FAMILY

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_the_shipped_family_was_built_by_the_current_recipe():
    shipped = manifest.read_manifest(SHIPPED_DEMO_FAMILY)
    assert shipped["recipe_version"] == RECIPE_VERSION
    # Fails after any change to the facts, the corpus or the full size's plans: rebuild and ship
    # the family again (`stagechat build-demo --rebuild --ship`).
    assert shipped["recipe_hash"] == manifest.recipe_hash()


def test_a_changed_recipe_changes_the_hash(monkeypatch):
    import dataclasses

    from models.demo import build

    before = manifest.recipe_hash()
    full = build.SIZES["full"]
    monkeypatch.setitem(build.SIZES, "full", dataclasses.replace(full, sft_per_country=full.sft_per_country + 1))
    assert manifest.recipe_hash() != before


def test_the_shipped_family_is_complete_small_and_has_its_figures():
    shipped = manifest.read_manifest(SHIPPED_DEMO_FAMILY)
    files = [f for f in SHIPPED_DEMO_FAMILY.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 30 * 1024 * 1024
    assert not (SHIPPED_DEMO_FAMILY / "data").exists()  # training data is regenerable, not shipped
    for step in manifest.SHIPPED_STEPS:
        done = json.loads((SHIPPED_DEMO_FAMILY / step / MARKER).read_text())
        assert done == {**done, "size": "full", "recipe": RECIPE_VERSION}
        assert shipped["step_seconds"][step] > 0
    assert set(shipped["eval"]["stages"]) == {"base", "sft", "dpo", "rlhf"}
    assert set(shipped["quick_check"]) == {"base", "sft", "dpo", "rlhf"}
    assert shipped["built_on"]["model"]


def test_the_registry_serves_the_shipped_family_by_default(monkeypatch):
    monkeypatch.delenv("STAGECHAT_DEMO_FAMILY", raising=False)
    registry = load_registry(MODELS / "stages.yaml", check_paths=True)
    assert registry.stages["base"].model == str(SHIPPED_DEMO_FAMILY / "base")
    assert registry.stages["rlhf"].adapter == str(SHIPPED_DEMO_FAMILY / "rlhf")
    assert registry.reward_models["rm"].model == str(SHIPPED_DEMO_FAMILY / "rm")
    for stage in registry.stages:  # adapter stages share their base's engine, so its methods too
        assert set(registry.speculative_methods(stage)) == {"draft_model", "ngram"}, stage


def test_another_family_is_picked_by_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGECHAT_DEMO_FAMILY", str(tmp_path))
    registry = load_registry(MODELS / "stages.yaml", check_paths=False)
    assert registry.speculative_methods("base")["draft_model"]["model"] == str(tmp_path / "draft")


def test_ship_refuses_an_incomplete_build_and_leaves_the_family_alone(tmp_path):
    (tmp_path / "built" / "base").mkdir(parents=True)
    family = tmp_path / "family"
    family.mkdir()
    (family / "keep").write_text("x")
    with pytest.raises(ValueError, match="not a complete build"):
        manifest.ship(tmp_path / "built", family)
    assert (family / "keep").exists() and not (tmp_path / "family.partial").exists()


def test_ship_refuses_a_build_trained_on_other_data(tmp_path):
    built = tmp_path / "built"
    for step in manifest.STEPS:
        (built / step).mkdir(parents=True)
        (built / step / MARKER).write_text(json.dumps({"size": "full", "recipe": RECIPE_VERSION, "seconds": 1}))
    (built / "data" / "prose.json").write_text('["an older corpus"]')
    with pytest.raises(ValueError, match="other data"):
        manifest.ship(built, tmp_path / "family")
    assert not (tmp_path / "family").exists() and not (tmp_path / "family.partial").exists()


@pytest.mark.integration  # two vLLM engines, one at a time (the base with its adapters, then with its draft)
def test_a_quick_eval_of_the_shipped_family_runs_every_stage_and_reproduces_its_manifest(monkeypatch):
    """`run_eval` through the real serving path (`serving_one_engine_at_a_time`) on the shipped family."""
    from models.demo.corpus import load_countries
    from models.demo.heldout import eval_prompts, example_prompts

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.delenv("STAGECHAT_DEMO_FAMILY", raising=False)
    reports = asyncio.run(manifest.quick_reports(MODELS / "stages.yaml"))

    assert list(reports) == ["base", "sft", "dpo", "rlhf"]
    asked = eval_prompts(load_countries()[: manifest.QUICK_COUNTRIES], fictional=manifest.QUICK_FICTIONAL)
    for report in reports.values():
        assert report.chat_prompts == len(asked) and 0.0 <= report.qa_accuracy <= 1.0
        assert set(report.accuracy) == {"capital", "language", "currency", "continent"}
        assert len(report.examples) == len(example_prompts()) and all(
            isinstance(e["reply"], str) for e in report.examples
        )
        assert report.draft_acceptance_rate is not None  # vLLM ran the draft against this stage
        # draft_model is lossless at temperature 0: the shipped draft changes no reply of any stage
        assert report.draft_same_text_rate == 1.0, report.stage
    assert reports["base"].completion_prompts > 0 and reports["base"].completion_accuracy is not None
    assert reports["sft"].completion_accuracy is None  # adapters are chat stages

    figures = manifest.quick_figures(reports)
    expected = manifest.read_manifest(SHIPPED_DEMO_FAMILY)["quick_check"]
    assert set(figures) == set(expected)
    for stage, values in expected.items():
        for metric, value in values.items():
            if value is None:
                assert figures[stage][metric] is None, (stage, metric)
            else:  # greedy decoding: the same weights give the same answers, up to float noise across CPUs
                assert figures[stage][metric] == pytest.approx(value, abs=0.1), (stage, metric)
