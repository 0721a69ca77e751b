"""Start-up order and what `/ready` says meanwhile: chat engines first, reward engines after, and the
stages and reward models still starting named in `/ready` and the UI's banner."""

from __future__ import annotations

import asyncio
import threading
import time

from starlette.testclient import TestClient

from server.app import create_app
from server.rewards import RewardService
from server.settings import Settings
from tests.conftest import FAKE_REGISTRY
from tests.server.test_rewards import ScriptedRewardEngine
from ui.status import startup_message

REGISTRY = {**FAKE_REGISTRY, "reward_models": {"rm": {"model": "fake/rm", "description": "counts words"}}}
QUESTION = {"model": "sft", "messages": [{"role": "user", "content": "Capital of Kenya?"}]}


def gated_reward_engine(gate: threading.Event):
    class Gated(ScriptedRewardEngine):
        async def start(self) -> None:
            while not gate.is_set():  # the test's thread opens it
                await asyncio.sleep(0.01)
            await super().start()

    return Gated


def poll(client, until, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while not until(r := client.get("/ready")):
        assert time.monotonic() < deadline, r.text
        time.sleep(0.01)
    return r


def test_chat_answers_while_reward_engines_start_and_ready_names_them(fake_pool_factory, tmp_path):
    pool = fake_pool_factory(REGISTRY)
    gate = threading.Event()
    rewards = RewardService(pool.registry, factory=gated_reward_engine(gate))
    app = create_app(Settings(data_dir=tmp_path), pool, with_ui=False, rewards=rewards)
    assert pool.starting() == ["base", "sft"] and rewards.starting() == ["rm"]
    with TestClient(app) as client:
        r = poll(client, lambda r: r.json().get("starting", {}).get("stages") == [])
        assert r.status_code == 503 and r.json()["status"] == "warming_up"
        assert r.json()["starting"] == {"stages": [], "reward_models": ["rm"]}
        assert client.post("/v1/chat/completions", json=QUESTION).status_code == 200  # chat does not wait for rm
        assert "reward models rm" in startup_message(client.app.state.service)
        gate.set()
        assert poll(client, lambda r: r.status_code == 200).json()["status"] == "ready"
        assert startup_message(client.app.state.service) is None


def test_the_banner_names_every_stage_before_the_engines_start(fake_pool_factory):
    from server.serving import StageService

    pool = fake_pool_factory(REGISTRY)
    service = StageService(pool=pool, rewards=RewardService(pool.registry, factory=ScriptedRewardEngine))
    assert startup_message(service) == (
        "⏳ **Starting** — engines are warming up: stages base, sft (chat with them "
        "once their engine is warm); reward models rm."
    )
