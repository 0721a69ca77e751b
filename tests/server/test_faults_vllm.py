"""An engine's death on real vLLM: `kill -9` of the chat engine's worker process (as the OOM killer
would) during 16 streams. Every stream ends with an in-band error (finish_reason "error"), never a
reset; requests meanwhile get a 503 with Retry-After naming the stage; `/ready` says degraded; the
engine comes back and serves; `/metrics` counts the restart. Its own server: the shared one's engine
must not die under other tests. Scripted engines: test_faults.py.
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
def server(tiny_family, tmp_path_factory):
    # A crash loop after two deaths: the first test's kill is healed, the second test's is not.
    server = stagechat_server(
        tiny_family / "stages.yaml",
        tmp_path_factory.mktemp("faults-data"),
        ("--no-ui",),
        env={"STAGECHAT_CRASH_LOOP_DEATHS": "2"},
    )
    yield server
    server.stop()


def stream(url: str, out: list, started: threading.Event) -> None:
    body = {"model": "base", "messages": MESSAGES, "max_tokens": 450, "n": 4, "ignore_eos": True, "stream": True}
    events: list = []
    try:
        with httpx.Client(timeout=120) as http, http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                events.append(RuntimeError(f"{r.status_code}: {r.read().decode()}"))
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
                    started.set()
    except httpx.HTTPError as exc:  # a reset: the test fails on it below
        events.append(exc)
    finally:
        out.append(events)
        started.set()  # ended (or failed) before it started: the assertions below say which


def restarts(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(v) for v in re.findall(r"^stagechat_engine_restarts_total\{[^}]*\} (\S+)$", text, re.MULTILINE))


def test_killed_engine_worker_ends_streams_in_band_then_the_engine_heals(server):
    url = server.url
    results: list = []
    starts = [threading.Event() for _ in range(4)]
    threads = [threading.Thread(target=stream, args=(url, results, e)) for e in starts]  # 4 requests × n=4
    for t in threads:
        t.start()
    for e in starts:
        assert e.wait(120), "a stream did not start"
    # Killed as soon as the last stream has its first token, so at least that one is cut (asserted
    # below); on a loaded machine the first may already have finished: it must then end cleanly.
    worker = engine_worker(server.process.pid)
    assert worker is not None, "no vLLM worker under the server"
    killed_at = time.monotonic()
    worker.send_signal(signal.SIGKILL)
    for t in threads:
        t.join(180)

    errors_in_band = 0
    for events in results:
        assert not any(isinstance(e, Exception) for e in events), events[-1]  # never a bare reset
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
    assert errors_in_band, "the kill came after every stream had finished"

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
