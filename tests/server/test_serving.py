"""StageService on scripted engines: prompt building, early close aborts, figures."""

import asyncio

from server.prefill import PLAIN_STOP, plain_transcript
from server.protocol import ChatCompletionRequest
from server.serving import StageService


def run(coro):
    return asyncio.run(coro)


def chat(**kw):
    return ChatCompletionRequest(model="base", messages=[{"role": "user", "content": "hi"}], **kw)


def test_closing_the_stream_early_aborts_the_engine_request(fake_pool_factory):
    async def go():
        pool = fake_pool_factory(delay=0.01)
        await pool.start()
        gen = await StageService(pool=pool).chat(chat())
        stream = gen.__aiter__()
        await stream.__anext__()
        engine = pool.built[("fake/base", None)]
        assert engine.stats().running_requests == 1
        await stream.aclose()
        return engine

    engine = run(go())
    assert engine.stats().running_requests == 0
    assert len(engine.aborted) == 1


def test_generation_keeps_text_usage_and_timings(fake_pool_factory):
    async def go():
        pool = fake_pool_factory()
        await pool.start()
        gen = await StageService(pool=pool).chat(chat(max_tokens=2))
        async for _ in gen:
            pass
        return gen

    gen = run(go())
    assert gen.choices[0].text == "The capital" and gen.choices[0].finish_reason == "length"
    assert gen.usage()["completion_tokens"] == 2
    assert gen.ttft_ms is not None and gen.duration_ms >= gen.ttft_ms


def test_base_without_chat_template_gets_the_plain_transcript(fake_pool_factory):
    async def go():
        pool = fake_pool_factory()
        await pool.start()
        engine = pool.built[("fake/base", None)]
        engine.tokenizer.chat_template = None
        gen = await StageService(pool=pool).chat(chat())
        return gen

    gen = run(go())
    assert PLAIN_STOP in gen.settings.stop
    assert (
        plain_transcript([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
        == "System: Be brief.\nUser: hi\nAssistant:"
    )


def test_store_receives_one_record_per_choice(fake_pool_factory):
    class ListStore:
        def __init__(self):
            self.records = []

        def record_generations(self, records):
            self.records.extend(records)

    async def go():
        pool = fake_pool_factory()
        await pool.start()
        store = ListStore()
        gen = await StageService(pool=pool, store=store).chat(chat(n=2, seed=3))
        async for _ in gen:
            pass
        return gen, store

    gen, store = run(go())
    assert [r.id for r in store.records] == [gen.id, f"{gen.id}:1"]
    assert store.records[0].messages == [{"role": "user", "content": "hi"}]
    assert store.records[0].completion == "The capital of Kenya is Nairobi."
    assert store.records[0].sampling["seed"] == 3


def test_prompt_logging_off_keeps_no_text(fake_pool_factory):
    class ListStore(list):
        def record_generations(self, records):
            self.extend(records)

    async def go():
        pool = fake_pool_factory()
        await pool.start()
        store = ListStore()
        gen = await StageService(pool=pool, store=store, log_prompts=False).chat(chat())
        async for _ in gen:
            pass
        return store

    record = run(go())[0]
    assert record.messages is None and record.completion is None and record.prompt_hash
