"""`server.scoring` on scripted engines: the answer's tokens are scored as prompt tokens after the
rendered conversation, every stage at once, errors reported per stage."""

import asyncio
import math

from server.scoring import StageScore, answer_ids, score_everywhere
from server.serving import StageService

MESSAGES = [{"role": "user", "content": "Capital of Kenya?"}]


def test_every_stage_scores_the_answer_tokens_only(fake_pool_factory):
    async def go():
        pool = fake_pool_factory()
        await pool.start()
        service = StageService(pool=pool)
        ids, start = await answer_ids(service, "base", MESSAGES, "Nairobi it is")
        scores = await score_everywhere(service, ["base", "sft", "nope"], MESSAGES, "Nairobi it is")
        return pool, ids, start, scores

    pool, ids, start, (base, sft, nope) = asyncio.run(go())
    assert len(ids) - start == 3
    assert base.tokens == sft.tokens == ["Nairobi", "it", "is"]
    assert base.logprobs == [math.log(0.5)] * 3  # the scripted engine's prompt logprobs
    assert base.mean_logprob == math.log(0.5) and base.perplexity == 2.0
    assert "nope" in nope.error and not nope.tokens
    engine = pool.built[("fake/base", None)]
    ((prompt, settings, adapter),) = [r for r in engine.requests if r[2] is not None]
    assert adapter.name == "sft" and prompt == ids  # the adapter stage scored on its own adapter
    assert (settings.max_tokens, settings.prompt_logprobs) == (0, 0)  # scored, nothing generated


def test_empty_answer_is_an_error_not_a_request(fake_pool_factory):
    async def go():
        pool = fake_pool_factory()
        await pool.start()
        return pool, await score_everywhere(StageService(pool=pool), ["base"], MESSAGES, "")

    pool, (score,) = asyncio.run(go())
    assert score.error and pool.built[("fake/base", None)].requests == []


def test_stage_score_figures():
    score = StageScore("x", ["a", "b"], [math.log(0.5), math.log(0.125)])
    assert math.isclose(score.mean_logprob, (math.log(0.5) + math.log(0.125)) / 2)
    assert math.isclose(score.perplexity, 4.0)
    assert StageScore("y").mean_logprob is None and StageScore("y").perplexity is None
