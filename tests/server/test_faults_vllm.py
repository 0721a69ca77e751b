"""An engine's death on real vLLM: `kill -9` of the chat engine's worker process (as the OOM killer
would) during 16 streams (4 requests × n=4). Every stream ends with an in-band error (finish_reason "error"), never a
reset; requests meanwhile get a 503 with Retry-After naming the stage; `/ready` says degraded; the
engine comes back and serves; `/metrics` counts the restart. Its own server: the shared one's engine
must not die under other tests, and a wider base than the tiny family's. Scripted engines: test_faults.py.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import httpx
import pytest

from server.launcher import engine_worker, stagechat_server
from server.supervisor import WATCH_SECONDS

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]


@pytest.fixture(scope="module")
def slow_family(tmp_path_factory):
    """The tiny family's shape (base + a LoRA stage) with a base wide and deep enough (~25M parameters)
    that 16 streams of 450 tokens take the engine seconds: on the 2-layer, 64-wide tiny base the engine
    had generated every token before the client read its first, so a kill then cut nothing."""
    from models.tiny import make_tiny_adapter, make_tiny_checkpoint

    root = tmp_path_factory.mktemp("slow-family")
    make_tiny_checkpoint(root / "base", layers=8, hidden=512, heads=8)
    make_tiny_adapter(root / "base", root / "lora")
    (root / "stages.yaml").write_text(
        "engine: {max_model_len: 512, dtype: float32}\n"
        "stages:\n  base: {model: ./base}\n  sft: {adapter: ./lora, base: base}\n"
    )
    return root


@pytest.fixture(scope="module")
def server(slow_family, tmp_path_factory):
    # A crash loop after two deaths: the first test's kill is healed, the second test's is not.
    server = stagechat_server(
        slow_family / "stages.yaml",
        tmp_path_factory.mktemp("faults-data"),
        ("--no-ui",),
        env={"STAGECHAT_CRASH_LOOP_DEATHS": "2"},
    )
    yield server
    server.stop()


def stream(url: str, out: list, go: threading.Barrier, started: threading.Event) -> None:
    """One streamed chat, sent when every thread is ready to send (`go`); `out` gets its events, or the
    refusal (status, Retry-After, body) of a request that reached the server after the engine died."""
    body = {"model": "base", "messages": MESSAGES, "max_tokens": 450, "n": 4, "ignore_eos": True, "stream": True}
    events: list = []
    try:
        with httpx.Client(timeout=120) as http:
            go.wait()
            with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    events.append((r.status_code, r.headers.get("retry-after"), json.loads(r.read())))
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
                        started.set()
    except httpx.HTTPError as exc:  # a reset: the test fails on it below
        events.append(exc)
    finally:
        out.append(events)


def restarts(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(v) for v in re.findall(r"^stagechat_engine_restarts_total\{[^}]*\} (\S+)$", text, re.MULTILINE))


def test_killed_engine_worker_ends_streams_in_band_then_the_engine_heals(server):
    url = server.url
    results: list = []
    go, first_token = threading.Barrier(4), threading.Event()
    threads = [threading.Thread(target=stream, args=(url, results, go, first_token)) for _ in range(4)]  # 4 × n=4
    for t in threads:
        t.start()
    # Killed at the first token of any stream: that stream has 449 to go, so it is cut (asserted below).
    # Waiting for all four to start raced with a fast engine: once, every stream had finished first.
    assert first_token.wait(120), "no stream started"
    worker = engine_worker(server.process.pid)
    assert worker is not None, "no vLLM worker under the server"
    killed_at = time.monotonic()
    worker.send_signal(signal.SIGKILL)
    for t in threads:
        t.join(180)

    errors_in_band = 0
    for events in results:
        assert not any(isinstance(e, Exception) for e in events), events[-1]  # never a bare reset
        if isinstance(events[0], tuple):  # arrived after the death: refused with an OpenAI error body
            status, retry_after, error = events[0]
            assert status == 503 and int(retry_after) >= 1 and "'base'" in error["error"]["message"], events[0]
            continue
        assert events[-1] == "[DONE]", events[-1]
        if isinstance(events[-2], dict) and "error" in events[-2]:
            errors_in_band += 1
            assert events[-2]["error"]["code"] in ("engine_restarting", "internal_error")
            finishes = [
                c["finish_reason"]
                for e in events
                if isinstance(e, dict)
                for c in e.get("choices") or []
                if c.get("finish_reason")
            ]
            assert "error" in finishes
    assert errors_in_band, "no stream was cut by the kill"

    r = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "sft", "messages": MESSAGES, "max_tokens": 4}, timeout=60
    )
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
    assert "'sft'" in r.json()["error"]["message"]
    ready = httpx.get(f"{url}/ready").json()
    assert ready["status"] == "degraded" and ready["down"][0]["state"] == "restarting"

    deadline = time.monotonic() + 600  # a busy 2-core machine takes minutes to start an engine
    while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the engine did not come back"
        time.sleep(0.5)
    healed = time.monotonic() - killed_at
    r = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "base", "messages": MESSAGES, "max_tokens": 4}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert restarts(url) == 1
    print(f"killed worker to serving again: {healed:.1f} s; {errors_in_band}/4 streams ended with an in-band error")


def test_a_second_death_in_the_window_is_a_crash_loop_and_is_not_restarted(server):
    """Runs after the heal above: the same engine's second death within the window stops the restarts."""
    url = server.url
    assert httpx.get(f"{url}/ready", timeout=10).status_code == 200
    worker = engine_worker(server.process.pid)
    assert worker is not None, "no vLLM worker under the server"
    worker.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (ready := httpx.get(f"{url}/ready", timeout=10).json()).get("status") != "degraded":
        assert time.monotonic() < deadline, ready
        time.sleep(0.2)
    assert ready["down"][0]["state"] == "stopped", ready
    r = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "sft", "messages": MESSAGES, "max_tokens": 4}, timeout=60
    )
    assert r.status_code == 503 and "retry-after" not in r.headers, r.text
    assert r.json()["error"]["code"] == "engine_crash_loop"
    time.sleep(2 * WATCH_SECONDS)  # a watcher tick: still no restart
    assert restarts(url) == 1 and httpx.get(f"{url}/ready", timeout=10).json()["down"][0]["state"] == "stopped"
