"""`run_eval` through the real serving path: vLLM serves the smoke family (base, two LoRA stages, draft)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from models.demo.build import build_demo
from models.demo.corpus import load_countries
from models.demo.heldout import eval_prompts, example_prompts
from models.eval import run_eval, serving_one_engine_at_a_time

pytestmark = pytest.mark.integration  # builds the smoke family and starts two vLLM engines, one at a time

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_every_stage_answers_and_the_draft_reports_acceptance(tmp_path, monkeypatch):
    from server.registry import load_registry

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    build_demo(tmp_path / "data" / "demo", size="smoke")
    registry = load_registry(MODELS / "stages.yaml", demo_family=tmp_path / "data" / "demo")
    countries = load_countries()[:3]

    async def evaluate():
        async with serving_one_engine_at_a_time(registry) as service:
            return await run_eval(service, countries, fictional=2)

    reports = asyncio.run(evaluate())
    assert list(reports) == ["base", "sft", "dpo", "rlhf"]
    asked = eval_prompts(countries, fictional=2)
    assert len(asked) == 3 * 6 + 2 * 2 + 6
    for report in reports.values():
        assert report.chat_prompts == len(asked) and 0.0 <= report.qa_accuracy <= 1.0
        assert set(report.accuracy) == {"capital", "language", "currency", "continent"}
        assert len(report.examples) == len(example_prompts()) and all(
            isinstance(e["reply"], str) for e in report.examples
        )
        assert report.draft_acceptance_rate is not None  # vLLM ran the smoke draft against this stage
    assert reports["base"].completion_prompts == 12 and reports["base"].completion_accuracy is not None
    assert reports["sft"].completion_accuracy is None  # adapters are chat stages
