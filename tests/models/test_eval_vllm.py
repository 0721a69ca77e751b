"""`run_eval` through the real serving path: vLLM serves the smoke family (base, two LoRA stages, draft)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from models.demo.build import build_demo
from models.demo.corpus import load_countries
from models.demo.heldout import eval_prompts, example_prompts
from models.eval import run_eval

pytestmark = pytest.mark.integration  # builds the smoke family and starts two vLLM engines, one at a time

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_every_stage_answers_and_the_draft_reports_acceptance(tmp_path, monkeypatch):
    from server.pool import EnginePool, vllm_factory
    from server.registry import load_registry
    from server.serving import StageService

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    build_demo(tmp_path / "data" / "demo", size="smoke")
    registry = load_registry(MODELS / "stages.yaml", demo_family=tmp_path / "data" / "demo")
    countries = load_countries()[:3]

    async def evaluate():
        pool = EnginePool(registry, vllm_factory, max_live_engines=1)
        await pool.start()
        try:
            return await run_eval(StageService(pool=pool), countries, fictional=2)
        finally:
            await pool.shutdown()

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
