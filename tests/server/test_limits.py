"""Admission limits: the limiter alone (a fake clock), then through the app on scripted engines:
429 with Retry-After and the OpenAI body, nothing started in the engine, figures in /metrics, and
the WebSocket's frame size and rate limits (error frame, socket kept)."""

import asyncio
import gc
import time

import pytest

from server.limits import Limiter, Limits, RateLimited, TokenBucket
from server.protocol import ChatCompletionRequest
from server.serving import StageService
from server.settings import Settings
from tests.conftest import ready_client

CHAT = {"model": "base", "messages": [{"role": "user", "content": "Capital of Kenya?"}], "max_tokens": 3}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- the limiter -------------------------------------------------------------------------------------


def test_concurrency_per_key_counts_each_key_apart():
    limiter = Limiter(Limits(max_concurrent_per_key=2, max_queued_requests=0))
    a1, a2 = limiter.admit("a", 10), limiter.admit("a", 10)
    with pytest.raises(RateLimited) as refused:
        limiter.admit("a", 10)
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.headers == {"Retry-After": "1"}
    limiter.admit("b", 10)  # another key is not held up by a's
    a1.release(12)
    a1.release(12)  # idempotent: a second release frees nothing more
    limiter.admit("a", 10)
    with pytest.raises(RateLimited):
        limiter.admit("a", 10)
    assert limiter.in_flight_for("a") == 2 and limiter.in_flight == 3
    a2.release()


def test_global_bound_refuses_every_key():
    limiter = Limiter(Limits(max_queued_requests=2))
    leases = [limiter.admit("a", 1), limiter.admit("b", 1)]
    with pytest.raises(RateLimited) as refused:
        limiter.admit("c", 1)
    assert refused.value.limit == "max_queued_requests"
    leases[0].release()
    limiter.admit("c", 1)


def test_tokens_per_minute_slide_and_say_when_to_retry():
    clock = Clock()
    limiter = Limiter(Limits(tokens_per_minute_per_key=100), clock=clock)
    limiter.admit("a", 60).release(60)
    clock.now += 20
    limiter.admit("a", 30).release(30)
    with pytest.raises(RateLimited) as refused:
        limiter.admit("a", 20)  # 90 used in the last minute: 20 more is over
    assert refused.value.limit == "tokens_per_minute_per_key"
    assert refused.value.retry_after == 40  # the 60 from t=0 leave the window at t=60; now t=20
    clock.now += 40
    limiter.admit("a", 20)  # the first 60 have left the window


def test_tokens_per_minute_charge_what_was_used_not_what_was_reserved():
    clock = Clock()
    limiter = Limiter(Limits(tokens_per_minute_per_key=100), clock=clock)
    lease = limiter.admit("a", 90)  # prompt + max_tokens
    with pytest.raises(RateLimited):
        limiter.admit("a", 20)
    lease.release(15)  # it stopped early
    limiter.admit("a", 80)


def test_a_request_bigger_than_the_minute_is_refused_outright():
    limiter = Limiter(Limits(tokens_per_minute_per_key=100))
    with pytest.raises(RateLimited) as refused:
        limiter.admit("a", 101)
    assert "max_tokens" in refused.value.message
    assert limiter.in_flight == 0


def test_token_bucket_allows_a_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(2, 4, clock=clock)
    assert [bucket.take() for _ in range(5)] == [True] * 4 + [False]
    assert bucket.retry_after() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take() and not bucket.take()


# -- through the app -----------------------------------------------------------------------------


def test_over_the_per_key_limit_is_429_and_nothing_reaches_the_engine(fake_app):
    settings = Settings(api_keys=frozenset({"k1", "k2"}), max_concurrent_per_key=1)
    app, pool = fake_app(settings=settings, delay=0.2)  # the first chat holds its slot for about a second
    with ready_client(app, pool) as client, client.websocket_connect("/v1/ws?api_key=k1") as ws:
        engine = pool.built[("fake/base", None)]
        ws.send_json({"type": "chat", "id": 1, **CHAT, "max_tokens": 6})  # holds k1's one slot ...
        assert ws.receive_json()["type"] == "delta"
        before = len(engine.requests)
        k1 = {"Authorization": "Bearer k1"}
        refused = client.post("/v1/chat/completions", json=CHAT, headers=k1)  # ... over HTTP too
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        ws.send_json({"type": "chat", "id": 2, **CHAT})
        assert ws.receive_json() == {"type": "error", "id": 2, "error": refused.json()["error"]}
        assert len(engine.requests) == before  # nothing started
        assert (
            client.post(
                "/v1/completions",
                json={"model": "base", "prompt": "Hi", "max_tokens": 2},
                headers={"Authorization": "Bearer k2"},
            ).status_code
            == 200
        )
        while ws.receive_json()["type"] != "done":
            pass
        assert client.post("/v1/chat/completions", json=CHAT, headers=k1).status_code == 200  # slot freed
        metrics = client.get("/metrics").text
        assert 'stagechat_limit{limit="max_concurrent_per_key"} 1.0' in metrics
        assert 'stagechat_rate_limited_total{limit="max_concurrent_per_key"}' in metrics
        assert "stagechat_in_flight_requests 0.0" in metrics


def test_tokens_per_minute_through_the_app(fake_app):
    app, pool = fake_app(settings=Settings(tokens_per_minute_per_key=45))
    with ready_client(app, pool) as client:
        body = {"model": "base", "prompt": "Capital of Kenya", "max_tokens": 30}  # 3 + 30 reserved
        assert client.post("/v1/completions", json=body).status_code == 200
        # charged what it used (3 prompt + 6 scripted tokens), so a second fits in the minute ...
        assert client.post("/v1/completions", json=body).status_code == 200
        refused = client.post("/v1/completions", json=body)
        assert refused.status_code == 429  # ... but not a third
        assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_a_generation_dropped_without_running_frees_its_slot(fake_pool_factory):
    async def go():
        pool = fake_pool_factory(delay=0.01)
        await pool.start()
        limiter = Limiter(Limits(max_concurrent_per_key=1))
        service = StageService(pool=pool, limiter=limiter)
        request = ChatCompletionRequest(**CHAT)
        gen = await service.chat(request)
        with pytest.raises(RateLimited):
            await service.chat(request)
        del gen  # a front door that failed before streaming it
        gc.collect()
        assert limiter.in_flight == 0
        stream = (await service.chat(request)).__aiter__()
        await stream.__anext__()
        await stream.aclose()  # a client that left mid-stream
        assert limiter.in_flight == 0

    asyncio.run(go())


def test_websocket_frame_size_and_rate_limits_keep_the_socket(fake_app):
    app, pool = fake_app(settings=Settings(ws_max_frame_bytes=1000, ws_frames_per_second=5))
    with ready_client(app, pool) as client, client.websocket_connect("/v1/ws") as ws:
        ws.send_text(
            '{"type":"chat","id":1,"model":"base","messages":[{"role":"user","content":"' + "x" * 2000 + '"}]}'
        )
        error = ws.receive_json()
        assert error["type"] == "error" and error["error"]["code"] == "frame_too_large"
        for _ in range(30):  # a burst of 10 is allowed (2 s × 5/s), then 5 a second
            ws.send_text('{"type":"cancel","id":"nope"}')
        codes = [ws.receive_json()["error"]["code"] for _ in range(30)]
        assert codes.count("unknown_id") >= 10 and codes.count("rate_limit_exceeded") >= 10
        assert codes.count("unknown_id") + codes.count("rate_limit_exceeded") == 30
        time.sleep(0.5)  # the socket is still open and serves once the rate allows
        ws.send_json({"type": "chat", "id": 2, **CHAT})
        frames = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(ws.receive_json())
        assert frames[-1]["type"] == "done"


def test_limits_come_from_flags_and_environment(monkeypatch):
    from cli.main import parser
    from server.settings import LIMIT_FIELDS

    monkeypatch.setenv("STAGECHAT_TOKENS_PER_MINUTE_PER_KEY", "900")
    monkeypatch.setenv("STAGECHAT_MAX_CONCURRENT_PER_KEY", "7")
    args = parser().parse_args(["serve", "--max-concurrent-per-key", "3", "--ws-frames-per-second", "2.5"])
    settings = Settings.from_env(**{name: getattr(args, name) for name in LIMIT_FIELDS})
    assert settings.max_concurrent_per_key == 3  # the flag wins over the environment
    assert settings.tokens_per_minute_per_key == 900
    assert settings.ws_frames_per_second == 2.5
    assert settings.max_body_bytes == 4 * 1024 * 1024 and settings.max_queued_requests == 1024
    assert settings.limits == Limits(3, 900, 1024)
