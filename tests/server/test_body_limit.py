"""The request body limit: refused up front by Content-Length, or as a chunked body passes the
limit (never reading past it); 413 with the OpenAI error body; nothing reaches the engine."""

import asyncio
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.body_limit import BodyLimitMiddleware
from server.settings import Settings
from tests.conftest import ready_client


def echo_app(limit: int) -> BodyLimitMiddleware:
    async def echo(request: Request):
        return JSONResponse({"bytes": len(await request.body())})

    return BodyLimitMiddleware(Starlette(routes=[Route("/", echo, methods=["POST"])]), limit)


def call(app, chunks: list[bytes], headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, dict, int]:
    """Drive the ASGI app by hand; returns (status, body, chunks the app asked for)."""
    sent, pulled = [], 0

    async def receive():
        nonlocal pulled
        pulled += 1
        if pulled <= len(chunks):
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": list(headers),
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("t", 80),
        "client": ("c", 1),
        "root_path": "",
    }
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), pulled


def test_under_the_limit_passes_untouched():
    status, body, _ = call(echo_app(100), [b"x" * 60, b"y" * 40])
    assert (status, body) == (200, {"bytes": 100})


def test_content_length_over_the_limit_is_refused_before_reading():
    status, body, pulled = call(echo_app(100), [b"x" * 101], [(b"content-length", b"101")])
    assert status == 413 and pulled == 0
    assert body["error"]["code"] == "request_too_large" and body["error"]["type"] == "invalid_request_error"
    assert "100 bytes" in body["error"]["message"]


def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit():
    chunks = [b"x" * 40] * 10  # 400 bytes, no Content-Length
    status, body, pulled = call(echo_app(100), chunks)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert pulled == 3  # 40 + 40 + 40 > 100: the rest was never read


def test_the_app_answers_413_and_starts_nothing(fake_app):
    app, pool = fake_app(settings=Settings(max_body_bytes=2000))
    with ready_client(app, pool) as client:
        big = {"model": "base", "messages": [{"role": "user", "content": "word " * 1000}]}
        r = client.post("/v1/chat/completions", json=big)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"
        assert pool.built[("fake/base", None)].requests == []
        # chunked upload (no Content-Length): refused by counting
        r = client.post(
            "/v1/chat/completions",
            content=iter([json.dumps(big).encode()[i : i + 500] for i in range(0, 5001, 500)]),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert (
            client.post(
                "/v1/chat/completions", json={**big, "messages": [{"role": "user", "content": "Capital of Kenya?"}]}
            ).status_code
            == 200
        )
        assert 'stagechat_too_large_total{door="http"}' in client.get("/metrics").text


def test_a_big_prompt_is_tokenised_off_the_event_loop(fake_pool_factory):
    """While a prompt longer than OFF_LOOP_CHARS is tokenised, the loop keeps running."""
    from server.protocol import CompletionRequest
    from server.serving import OFF_LOOP_CHARS, StageService

    async def go():
        pool = fake_pool_factory(max_model_len=10**6)
        await pool.start()
        engine = pool.built[("fake/base", None)]
        slow_encode = engine.tokenizer.encode
        ticks = []

        def encode(text, add_special_tokens=True):
            import time

            time.sleep(0.3)  # a long tokenisation, holding its thread
            return slow_encode(text, add_special_tokens)

        engine.tokenizer.encode = encode

        async def ticker():
            while True:
                ticks.append(asyncio.get_running_loop().time())
                await asyncio.sleep(0.02)

        request = CompletionRequest(model="base", prompt="word " * OFF_LOOP_CHARS, max_tokens=2)
        tick = asyncio.create_task(ticker())
        await StageService(pool=pool).complete(request)
        tick.cancel()
        return ticks

    ticks = asyncio.run(go())
    assert len(ticks) >= 8  # the loop ticked every 20 ms through the 0.3 s encode (on the loop: 1 or 2)
