"""POST /v1/admin/reload on scripted engines: new stages serve at once on the same engine, an engine
restarts only when its adapters outgrow its LoRA slots, a bad registry changes nothing, admin key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.fake_engine import ScriptedEngine
from server.pool import EnginePool
from server.registry import load_registry
from server.registry_file import add_stage
from server.settings import Settings

REGISTRY = """\
stages:
  base:
    model: fake/base
  rlhf:
    adapter: fake/rlhf
    base: base
"""
CHAT = {"messages": [{"role": "user", "content": "Capital of Kenya?"}], "max_tokens": 4}


@pytest.fixture
def served(tmp_path):
    """`served(spare_lora_slots=..., admin_key=...)` → (client, pool, registry path, engines built)."""
    clients = []

    def make(*, spare_lora_slots: int = 2, admin_key: str | None = None):
        path = tmp_path / "stages.yaml"
        path.write_text(REGISTRY)
        built: list[ScriptedEngine] = []

        def factory(spec):
            built.append(ScriptedEngine(speculative_method=spec.speculative_method))
            built[-1].spec = spec
            return built[-1]

        pool = EnginePool(load_registry(path, data_dir=tmp_path), factory, spare_lora_slots=spare_lora_slots)
        settings = Settings(registry_path=path, data_dir=tmp_path, admin_key=admin_key)
        client = TestClient(create_app(settings, pool, with_ui=False))
        client.__enter__()
        clients.append(client)
        deadline = time.monotonic() + 5
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return client, pool, path, built

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def new_round(path: Path, name: str = "rlhf-2", parent: str = "rlhf") -> Path:
    adapter = path.parent / "rounds" / name
    adapter.mkdir(parents=True)
    add_stage(path, name, {"adapter": str(adapter), "base": parent, "description": "round 2"})
    return adapter


def stage_ids(client) -> list[str]:
    return [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_reload_serves_a_new_adapter_stage_on_the_running_engine(served):
    client, pool, path, built = served()
    assert built[0].spec.max_loras == 1 + 2 + 1  # one adapter, two spare slots, one kept empty
    rlhf_ref = pool.resolve("rlhf", None)[1]
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "rlhf-2"}).status_code == 404

    adapter = new_round(path)
    response = client.post("/v1/admin/reload")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["added"] == ["rlhf-2"] and body["removed"] == [] and body["restarted_engines"] == []
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert list(models) == ["base", "rlhf", "rlhf-2"]
    assert models["rlhf-2"]["parent"] == "rlhf" and models["rlhf-2"]["description"] == "round 2"
    answer = client.post("/v1/chat/completions", json={**CHAT, "model": "rlhf-2"})
    assert answer.status_code == 200 and answer.json()["model"] == "rlhf-2"
    assert len(built) == 1  # no engine started: the same engine serves the new stage
    _, _, adapter_ref = built[0].requests[-1]
    assert adapter_ref.path == str(adapter) and adapter_ref.int_id != rlhf_ref.int_id
    assert pool.resolve("rlhf", None)[1] == rlhf_ref  # unchanged adapters keep their vLLM id


def test_reload_restarts_an_engine_whose_lora_slots_are_full(served):
    client, pool, path, built = served(spare_lora_slots=0)
    new_round(path)
    body = client.post("/v1/admin/reload").json()
    assert body["restarted_engines"] == [{"model": "fake/base", "speculative": None}]
    assert len(built) == 2 and built[1].spec.max_loras == 2 + 1
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "rlhf-2"}).status_code == 200
    assert built[1].requests and pool.engines()[("fake/base", None)] is built[1]


def test_an_invalid_registry_is_refused_and_the_old_one_keeps_serving(served):
    client, pool, path, built = served()
    path.write_text(REGISTRY + "  broken:\n    adapter: fake/x\n    base: nowhere\n")
    response = client.post("/v1/admin/reload")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_registry" and "base 'nowhere' is not a stage" in error["message"]
    assert stage_ids(client) == ["base", "rlhf"]
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "rlhf"}).status_code == 200


def test_reload_removes_stages_that_left_the_registry(served):
    client, pool, path, built = served()
    path.write_text("stages:\n  base:\n    model: fake/base\n")
    body = client.post("/v1/admin/reload").json()
    assert body["removed"] == ["rlhf"] and stage_ids(client) == ["base"]
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "rlhf"}).status_code == 404


def test_reload_needs_the_admin_key_when_one_is_set(served):
    client, pool, path, built = served(admin_key="sesame")
    new_round(path)
    denied = client.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong"})
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_admin_key"
    assert stage_ids(client) == ["base", "rlhf"]
    assert client.post("/v1/admin/reload", headers={"Authorization": "Bearer sesame"}).status_code == 200
    assert "rlhf-2" in stage_ids(client)
