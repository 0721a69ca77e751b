"""Faults on scripted engines: an unexpected exception anywhere is an OpenAI error body with a request
id (never plain text); an engine that dies is noticed, restarted with backoff, and meanwhile its stages
get a 503 with Retry-After, streams in flight end in-band with finish_reason "error", `/ready` says
degraded, the other engines keep serving; a crash loop stops the restarts. The same for reward engines.
A generation log that cannot be written leaves the answer served. Real vLLM: test_faults_vllm.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import ClassVar

import pytest
from prometheus_client import REGISTRY as PROMETHEUS
from starlette.middleware import Middleware
from starlette.testclient import TestClient

from server import serving
from server.app import create_app
from server.engine import EngineDead
from server.fake_engine import FakeTokenizer
from server.rewards import RewardService
from server.settings import Settings
from tests.conftest import FAKE_REGISTRY, ready_client

CHAT = {"model": "base", "messages": [{"role": "user", "content": "Capital of Kenya?"}]}
TWO_ENGINES = {"stages": {**FAKE_REGISTRY["stages"], "other": {"model": "fake/other", "description": "another"}}}
BASE = ("fake/base", None)


def sse_events(response) -> list:
    return [
        line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
        for line in response.iter_lines()
        if line.startswith("data: ")
    ]


def poll(check, seconds: float = 5.0, every: float = 0.01):
    """check()'s first truthy value, polled until `seconds` have passed (then the test fails)."""
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every)
    return value


def restarts(engine: str) -> float:
    return PROMETHEUS.get_sample_value("stagechat_engine_restarts_total", {"engine": engine}) or 0.0


def assert_error_body(body: dict, code: str) -> dict:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    return body["error"]


@pytest.fixture
def healing(fake_app):
    """A client on two engines (base + sft on fake/base, `other` on fake/other) that restart fast."""

    def make(backoff=(0.3, 1.0), crash_loop=(5, 300.0), **engine_kwargs):
        app, pool = fake_app(TWO_ENGINES, **engine_kwargs)
        pool.supervisor.backoff, pool.supervisor.crash_loop = backoff, crash_loop
        return ready_client(app, pool)

    return make


# -- A. no 500 in plain text ----------------------------------------------------------------------


class Boom:
    """A middleware that fails: the innermost one, so every other layer is around it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/boom":
            raise RuntimeError("middleware exploded")
        await self.app(scope, receive, send)


def test_unexpected_exception_in_a_route_is_a_json_500_with_a_logged_request_id(fake_app, caplog, monkeypatch):
    app, pool = fake_app()
    with ready_client(app, pool) as client:
        monkeypatch.setattr(app.state.service, "stages", lambda: 1 / 0)
        with caplog.at_level(logging.ERROR, logger="server.internal_errors"):
            r = client.get("/v1/models")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    error = assert_error_body(r.json(), "internal_error")
    assert error["type"] == "server_error"
    rid = r.headers["x-request-id"]
    assert rid in error["message"]
    logged = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert logged and logged[0].exc_info and logged[0].exc_info[0] is ZeroDivisionError  # with its traceback


def test_unexpected_exception_in_a_middleware_is_json_and_keeps_the_clients_request_id(fake_app):
    app, pool = fake_app()
    app.user_middleware.append(Middleware(Boom))  # appended: innermost, below the project's middleware
    with ready_client(app, pool) as client:
        r = client.get("/boom", headers={"x-request-id": "client-42"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "client-42"
    assert "client-42" in assert_error_body(r.json(), "internal_error")["message"]


def test_database_unreachable_is_a_503_with_retry_after(fake_app, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def unreachable():
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    app, pool = fake_app()
    with ready_client(app, pool) as client:
        monkeypatch.setattr(app.state.service, "stages", unreachable)
        r = client.get("/v1/models")
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
    assert_error_body(r.json(), "store_unavailable")


def test_unexpected_exception_mid_stream_is_an_in_band_error(fake_app, monkeypatch):
    app, pool = fake_app()
    with ready_client(app, pool) as client:
        monkeypatch.setattr("server.routes.openai.ChunkWriter.chunk", lambda self, batch, p=0: 1 / 0)
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status_code == 200
            events = sse_events(r)
    assert_error_body(events[-2], "internal_error") and events[-1] == "[DONE]"


def test_an_engine_error_mid_stream_finishes_the_answer_with_error_in_band(healing):
    def broken():
        raise RuntimeError("the engine's output loop broke")

    with healing(delay=0.02) as client:
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            client.pool.built[BASE]._check_alive = broken
            events = [
                line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
                for line in lines
                if line.startswith("data: ")
            ]
    assert [e for e in events if isinstance(e, dict) and e.get("choices")][-1]["choices"][0]["finish_reason"] == "error"
    assert_error_body(events[-2], "internal_error") and events[-1] == "[DONE]"


# -- B. engines heal ------------------------------------------------------------------------------


def test_engine_death_mid_stream_ends_in_band_then_503_then_served_again(healing, caplog):
    before = restarts("fake/base")
    with healing(delay=0.02) as client:
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
            client.pool.built[BASE].die("killed -9")
            events = [
                line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
                for line in lines
                if line.startswith("data: ")
            ]
        finishing = [e for e in events if isinstance(e, dict) and e.get("choices")]
        assert finishing[-1]["choices"][0]["finish_reason"] == "error"
        error = assert_error_body(events[-2], "engine_restarting")
        assert "'base'" in error["message"] and events[-1] == "[DONE]"

        r = client.post("/v1/chat/completions", json={**CHAT, "model": "sft"})  # same engine: down too
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "'sft'" in assert_error_body(r.json(), "engine_restarting")["message"]
        assert client.post("/v1/chat/completions", json={**CHAT, "model": "other"}).status_code == 200

        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "degraded"
        (down,) = ready.json()["down"]
        assert down["model"] == "fake/base" and down["state"] == "restarting" and "killed -9" in down["error"]
        assert set(down["stages"]) == {"base", "sft"}

        poll(lambda: client.get("/ready").status_code == 200)
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert client.pool.built[BASE].dead() is None  # a new engine
    assert restarts("fake/base") == before + 1


def test_engine_death_mid_request_is_a_503_for_a_non_streamed_request(healing):
    with healing(delay=0.05) as client:
        engine = client.pool.built[BASE]
        threading.Timer(0.08, engine.die).start()
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and "retry-after" in r.headers
        assert_error_body(r.json(), "engine_restarting")


def test_an_idle_engine_death_is_noticed_by_the_watcher(healing):
    with healing(backoff=(5.0, 5.0)) as client:
        client.pool.built[BASE].die()
        ready = poll(lambda: (r := client.get("/ready")).status_code == 503 and r.json())
        assert ready["status"] == "degraded" and ready["down"][0]["model"] == "fake/base"
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and 1 <= int(r.headers["retry-after"]) <= 5


def test_websocket_generation_ends_with_an_error_frame_when_its_engine_dies(healing):
    with healing(delay=0.02) as client:
        with client.websocket_connect("/v1/ws") as ws:
            ws.send_text(json.dumps({"type": "chat", "id": 1, **CHAT}))
            assert json.loads(ws.receive_text())["type"] == "delta"
            client.pool.built[BASE].die()
            while (frame := json.loads(ws.receive_text()))["type"] == "delta":
                pass
    assert frame["type"] == "error" and frame["id"] == 1 and frame["finish_reason"] == "error"
    assert frame["response_id"].startswith("chatcmpl-") and frame["error"]["code"] == "engine_restarting"


def test_a_crash_loop_stops_the_restarts(healing, caplog):
    with (
        healing(backoff=(0.01, 0.02), crash_loop=(3, 60.0)) as client,
        caplog.at_level(logging.ERROR, logger="server.supervisor"),
    ):
        for _ in range(3):
            engine = poll(lambda: client.pool.engines().get(BASE))  # restarted (or the first)
            engine.die()
            poll(lambda: BASE not in client.pool.engines())
        ready = poll(
            lambda: (r := client.get("/ready").json()).get("down") and r["down"][0]["state"] == "stopped" and r
        )
        assert ready["status"] == "degraded" and ready["down"][0]["deaths"] == 3
        time.sleep(0.1)  # no restart sneaks in
        assert BASE not in client.pool.engines()
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and "retry-after" not in r.headers
        assert_error_body(r.json(), "engine_crash_loop")
        assert client.post("/v1/chat/completions", json={**CHAT, "model": "other"}).status_code == 200
    assert any("crash loop" in rec.getMessage() for rec in caplog.records)


def test_a_restart_that_fails_counts_as_a_death_and_is_retried(healing):
    with healing(backoff=(0.01, 0.02)) as client:
        pool = client.pool
        factory, failures = pool.factory, []

        def flaky(spec):
            if len(failures) < 2:
                failures.append(spec)
                raise RuntimeError("out of memory")
            return factory(spec)

        pool.factory = flaky
        pool.built[BASE].die()
        poll(lambda: BASE not in pool.engines())  # noticed by the watcher
        poll(lambda: BASE in pool.engines())
        assert len(failures) == 2 and client.get("/ready").status_code == 200


class DyingRewardEngine:
    """A reward engine that scores 1.0 until it dies."""

    max_model_len = 64
    instances: ClassVar[list[DyingRewardEngine]] = []

    def __init__(self, model: str, engine_args: dict):
        self.tokenizer = FakeTokenizer()
        self.death: str | None = None
        DyingRewardEngine.instances.append(self)

    async def start(self) -> None:
        pass

    def dead(self) -> str | None:
        return self.death

    async def score(self, prompts):
        if self.death:
            raise EngineDead(self.death)
        return [1.0] * len(prompts)

    async def shutdown(self) -> None:
        pass


def test_a_reward_engine_that_dies_is_restarted(fake_pool_factory, tmp_path):
    registry = {**FAKE_REGISTRY, "reward_models": {"rm": {"model": "fake/rm", "description": "ones"}}}
    pool = fake_pool_factory(registry)
    rewards = RewardService(pool.registry, factory=DyingRewardEngine)
    rewards.supervisor.backoff = (0.3, 1.0)
    app = create_app(Settings(data_dir=tmp_path), pool, with_ui=False, rewards=rewards)
    body = {"model": "rm", "input": [{"prompt": "Capital:", "completion": " Nairobi"}]}
    before = restarts("reward:fake/rm")
    with ready_client(app, pool) as client:
        DyingRewardEngine.instances[-1].death = "killed -9"
        r = client.post("/v1/rewards", json=body)
        assert r.status_code == 503 and "retry-after" in r.headers
        assert "'rm'" in assert_error_body(r.json(), "engine_restarting")["message"]
        ready = client.get("/ready").json()
        assert ready["status"] == "degraded" and ready["down"][0]["reward_models"] == ["rm"]
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # stages keep serving
        poll(lambda: client.get("/ready").status_code == 200)
        assert client.post("/v1/rewards", json=body).json()["data"][0]["score"] == 1.0
    assert restarts("reward:fake/rm") == before + 1


# -- C. the generation log may fail; the answer is served ----------------------------------------


class BrokenStore:
    """A store whose generation log cannot be written (the database is down, or hangs)."""

    def __init__(self, hang: float = 0.0):
        self.hang = hang

    def record_generations(self, records):
        from sqlalchemy.exc import OperationalError

        time.sleep(self.hang)
        raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))

    rate = prefer = rank = correct = lambda self, *args, **kwargs: self.record_generations(())

    def close(self) -> None:
        pass


def log_failures() -> float:
    return PROMETHEUS.get_sample_value("stagechat_generation_log_failures_total") or 0.0


@pytest.mark.parametrize("hang", [0.0, 1.0])
def test_chat_answers_when_the_generation_log_cannot_be_written(fake_app, monkeypatch, hang):
    monkeypatch.setattr(serving, "GENERATION_LOG_WAIT", 0.2)
    before = log_failures()
    app, pool = fake_app(store=BrokenStore(hang))
    with ready_client(app, pool) as client:
        began = time.monotonic()
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        assert time.monotonic() - began < 0.2 + 0.5  # a hanging database does not hold the answer
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s:
            assert sse_events(s)[-1] == "[DONE]"
    assert log_failures() == before + 2


def test_a_rating_while_the_database_is_down_is_a_503_json_on_both_doors(fake_app):
    app, pool = fake_app(store=BrokenStore())
    rating = {"response_id": "chatcmpl-1", "rating": "up"}
    with ready_client(app, pool) as client:
        r = client.post("/v1/feedback", json=rating)
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
        assert_error_body(r.json(), "store_unavailable")
        with client.websocket_connect("/v1/ws") as ws:
            ws.send_text(json.dumps({"type": "feedback", "id": "f1", **rating}))
            frame = json.loads(ws.receive_text())
    assert frame["type"] == "error" and frame["id"] == "f1" and frame["error"]["code"] == "store_unavailable"


def test_ready_reports_a_database_that_does_not_answer(fake_app, tmp_path):
    from sqlalchemy import create_engine

    store = BrokenStore()
    store.engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'no.db'}")  # its folder does not exist
    app, pool = fake_app(store=store)
    with TestClient(app) as client:
        r = poll(lambda: (r := client.get("/ready")).json().get("store") and r)
        assert r.status_code == 503 and r.json()["status"] == "degraded"
        assert "OperationalError" in r.json()["store"]["error"]


def test_the_crash_loop_count_can_be_lowered_from_the_environment(monkeypatch):
    from server.supervisor import CRASH_LOOP, Supervisor

    assert Supervisor().crash_loop == CRASH_LOOP
    monkeypatch.setenv("STAGECHAT_CRASH_LOOP_DEATHS", "2")
    assert Supervisor().crash_loop == (2, CRASH_LOOP[1])
