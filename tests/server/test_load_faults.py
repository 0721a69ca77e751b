"""Load and faults on loopback, real vLLM on the tiny family: 512 mixed streams without an error,
100 streams dropped at once free every engine slot, and `kill -9` during 128 streams loses no
acknowledged rating (the restarted server is ready, serves, and SIGTERM stops it and its engine)."""

import asyncio
import json
import os
import re
import signal
import time

import httpx
import psutil
import pytest

from server.launcher import stagechat_server
from tests.conftest import assert_a_signal_stops_every_engine

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "What is the capital of Kenya?"}]


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


def wait_for_metric(url: str, name: str, value: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (seen := metric(url, name)) != value:
        assert time.monotonic() < deadline, f"{name} stayed at {seen}, expected {value}"
        time.sleep(0.05)


async def stream_chat(client: httpx.AsyncClient, url: str, stage: str, max_tokens: int) -> dict:
    """One streamed chat; returns what it saw: status, text chunks, finish reason, [DONE], errors."""
    body = {"model": stage, "messages": MESSAGES, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    seen = {"status": None, "chunks": 0, "finish": None, "done": False, "errors": []}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        seen["status"] = r.status_code
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                seen["done"] = True
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    seen["errors"].append(chunk["error"])
                for choice in chunk.get("choices", []):
                    seen["chunks"] += 1
                    seen["finish"] = choice["finish_reason"] or seen["finish"]
    return seen


def test_512_streams_mixed_over_stages_finish_without_an_error(live_server):
    url = live_server.url

    async def go():
        limits = httpx.Limits(max_connections=600, max_keepalive_connections=600)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            return await asyncio.gather(*(stream_chat(client, url, ("base", "sft")[i % 2], 16) for i in range(512)))

    results = asyncio.run(go())
    bad = [r for r in results if r["status"] != 200 or r["errors"] or not r["done"] or r["finish"] != "length"]
    assert bad == [], f"{len(bad)} of 512 streams failed, e.g. {bad[:3]}"
    assert all(r["chunks"] >= 1 for r in results)
    wait_for_metric(url, "stagechat_in_flight_requests", 0)


def test_a_client_dropping_100_streams_at_once_frees_every_engine_slot(live_server):
    url, n, max_tokens = live_server.url, 100, 400
    generated_before = metric(url, "vllm:generation_tokens_total")

    async def go():
        started, drop = asyncio.Semaphore(0), asyncio.Event()
        body = {"model": "sft", "messages": MESSAGES, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}

        async def one(client):
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        break
                started.release()
                await drop.wait()  # leaving the block closes the connection mid-stream

        limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            tasks = [asyncio.create_task(one(client)) for _ in range(n)]
            for _ in range(n):
                await started.acquire()
            owed = n * max_tokens - (metric(url, "vllm:generation_tokens_total") - generated_before)
            drop.set()
            await asyncio.gather(*tasks)
            return owed  # tokens the streams had still to generate when they were dropped

    owed = asyncio.run(go())
    wait_for_metric(url, "stagechat_engine_unfinished_requests", 0)
    wait_for_metric(url, "stagechat_in_flight_requests", 0)
    # When the streams still owed many tokens at the drop, the engine stopped early: it generated far
    # fewer than that afterwards. On a busy machine the hundredth stream can show its first token only
    # after the others have finished (all 40,000 tokens generated before the drop, in one suite run),
    # so then there is nothing left to abort; test_client_disconnect_aborts_the_generation checks aborting.
    generated_after_drop = metric(url, "vllm:generation_tokens_total") - generated_before - (n * max_tokens - owed)
    if owed >= n * max_tokens / 4:
        assert generated_after_drop < owed / 2, f"{generated_after_drop} tokens generated after the drop, {owed} owed"


def test_kill_9_during_streams_and_ratings_loses_no_acknowledged_rating(tiny_family, tmp_path):
    config, data = tiny_family / "stages.yaml", tmp_path / "data"
    server = stagechat_server(config, data, ("--no-ui",), ipc_dir=True)  # killed, it cannot remove its own
    acked: dict[str, str] = {}  # feedback id -> response id, for every rating the server acknowledged
    try:
        url = server.url
        engine_processes = psutil.Process(server.process.pid).children(recursive=True)

        async def go():
            limits = httpx.Limits(max_connections=160, max_keepalive_connections=160)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                answers = await asyncio.gather(
                    *(
                        client.post(
                            f"{url}/v1/chat/completions",
                            json={"model": ("base", "sft")[i % 2], "messages": MESSAGES, "max_tokens": 4},
                        )
                        for i in range(60)
                    )
                )
                ids = [a.json()["id"] for a in answers]
                streams = [
                    asyncio.create_task(stream_chat(client, url, ("base", "sft")[i % 2], 300)) for i in range(128)
                ]
                killed = asyncio.Event()

                async def rate(worker: int):
                    for response_id in ids[worker::4]:
                        try:
                            r = await client.post(
                                f"{url}/v1/feedback",
                                json={"response_id": response_id, "rating": ("up", "down")[len(acked) % 2]},
                            )
                        except httpx.HTTPError:
                            return  # the server died under this request: not acknowledged
                        assert r.status_code == 200, r.text
                        acked[r.json()["id"]] = response_id
                        if len(acked) >= 24 and not killed.is_set():
                            killed.set()
                            os.killpg(server.process.pid, signal.SIGKILL)  # the server and its engine

                await asyncio.gather(*(rate(w) for w in range(4)))
                assert killed.is_set(), "every rating finished before the kill"
                await asyncio.gather(*streams, return_exceptions=True)

        asyncio.run(go())
        server.process.wait(timeout=30)
        psutil.wait_procs(engine_processes, timeout=30)
    finally:
        server.stop()

    restarted = stagechat_server(config, data, ("--no-ui",))
    try:
        listed = httpx.get(f"{restarted.url}/v1/feedback", params={"limit": 1000}).json()["data"]
        stored = {fb["id"]: fb["response_id"] for fb in listed}
        missing = {fid: rid for fid, rid in acked.items() if stored.get(fid) != rid}
        assert missing == {}, f"{len(missing)} of {len(acked)} acknowledged ratings lost"
        answer = httpx.post(
            f"{restarted.url}/v1/chat/completions",
            json={"model": "sft", "messages": MESSAGES, "max_tokens": 4},
            timeout=60,
        )
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0
        assert_a_signal_stops_every_engine(restarted, signal.SIGTERM)  # SIGINT: tests/test_closed_loop.py
    finally:
        restarted.stop()
