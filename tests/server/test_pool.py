"""EnginePool on scripted engines: which engine serves what, lazy variants, eviction, adapter slots."""

import asyncio

import pytest

from server.errors import APIError

REGISTRY = {
    "stages": {
        "base": {
            "model": "org/base",
            "speculative": {"ngram": {"method": "ngram"}, "draft": {"method": "draft_model"}},
        },
        "sft": {"adapter": "org/sft", "base": "base"},
        "rlhf": {"adapter": "org/rlhf", "base": "sft"},
        "other": {"model": "org/other"},
    }
}


def test_adapter_chain_shares_the_root_engine_and_gets_a_spare_lora_slot(fake_pool_factory):
    async def go():
        pool = fake_pool_factory(REGISTRY)
        await pool.start()
        routes = {s: await pool.route(s) for s in ("base", "sft", "rlhf")}
        return pool, routes

    pool, routes = asyncio.run(go())
    assert set(pool.engines()) == {("org/base", None), ("org/other", None)}
    assert routes["base"].engine is routes["rlhf"].engine and routes["base"].adapter is None
    assert routes["rlhf"].adapter.path == "org/rlhf"
    spec = pool._spec_for("sft", ("org/base", None))
    assert spec.max_loras == 3  # two adapters + one slot kept empty (vLLM CPU LoRA bug)


def test_variants_start_lazily_and_the_least_recently_used_idle_engine_is_evicted(fake_pool_factory):
    async def go():
        pool = fake_pool_factory(REGISTRY)
        await pool.start()
        await pool.route("other")  # base was used longer ago
        ngram = await pool.route("sft", "ngram")
        return pool, ngram

    pool, ngram = asyncio.run(go())
    assert ngram.speculative_method == "ngram" and ngram.adapter.name == "sft"
    assert set(pool.engines()) == {("org/other", None), ("org/base", "ngram")}
    assert pool.built[("org/base", None)].started is False  # shut down on eviction


def test_no_idle_engine_to_evict_is_503(fake_pool_factory):
    async def go():
        pool = fake_pool_factory(REGISTRY, delay=0.05)
        await pool.start()
        busy = []
        for stage in ("base", "other"):
            route = await pool.route(stage)
            stream = route.engine.generate([1], _settings(), f"busy-{stage}")
            await stream.__anext__()
            busy.append(stream)
        try:
            await pool.route("base", "ngram")
        finally:
            for stream in busy:
                await stream.aclose()

    with pytest.raises(APIError) as err:
        asyncio.run(go())
    assert err.value.status == 503 and err.value.code == "engines_busy"


def _settings():
    from server.engine import SamplingSettings

    return SamplingSettings(max_tokens=50)
