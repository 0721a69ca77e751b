"""Remote stages (`server.remote_engine`): stagechat in front of real vLLM OpenAI servers on loopback.

The registry's `remote:` stages and their checks run without any server. The rest drives the app in
process (`engine_factory`, so only `RemoteEngine`s: no engine of its own) against two real vLLM
servers: the session's `remote_vllm` (runtime LoRA loading allowed) and this module's `spec_vllm`
(ngram speculation with per-request acceptance figures, runtime LoRA loading refused). The core API
tests run against a remote stage too, in test_integration_openai.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from contextlib import contextmanager

import httpx
import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.engine import SamplingSettings
from server.launcher import free_port, vllm_openai_server
from server.pool import EnginePool, engine_factory
from server.registry import Registry, RegistryError, RemoteSpec, load_registry
from server.remote_engine import RemoteEngine
from server.settings import Settings
from server.store import Store

MESSAGES = [{"role": "user", "content": "What is the capital of Kenya?"}]
# A repetitive prompt: ngram speculation finds its drafts in it.
REPEAT = [{"role": "user", "content": "Hello there, how are you today? " * 6}]


# -- the registry ------------------------------------------------------------------------------


def test_remote_stage_in_the_registry(tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "stages.yaml").write_text(
        "stages:\n"
        "  base:\n"
        "    remote: {url: 'http://gpu:8000/v1', model: org/base, tokenizer: ./tok}\n"
        "    speculative:\n"
        "      ngram: {remote: {url: 'http://gpu:8001/v1', model: org/base}}\n"
        "  sft:\n"
        "    remote: {url: 'http://gpu:8000/v1', model: sft, api_key_env: GPU_KEY}\n"
        "    base: base\n"
        "  rlhf:\n"
        "    adapter: ./tok\n"
        "    base: sft\n"
    )
    registry = load_registry(tmp_path / "stages.yaml")
    assert registry.parent("sft") == "base" and registry.root("sft") == "sft"  # a parent, not an adapter base
    assert registry.root("rlhf") == "sft"
    assert registry.checkpoint("sft") == "http://gpu:8000/v1#sft"
    assert registry.speculative_methods("sft") == {}  # a remote stage does not inherit its parent's servers
    ngram = registry.remote_for("base", "ngram")
    assert ngram.url == "http://gpu:8001/v1" and ngram.tokenizer == str(tmp_path / "tok")  # the stage's tokenizer
    sft = registry.remote_for("sft")
    assert sft.tokenizer == str(tmp_path / "tok") and sft.api_key_env == "GPU_KEY"  # its parent's tokenizer
    assert registry.remote_for("rlhf") is None


@pytest.mark.parametrize(
    ("stage", "problem"),
    [
        ({"remote": {"url": "http://x/v1", "model": "m"}, "model": "/m"}, "either"),
        ({"remote": {"url": "http://x/v1"}}, "model"),
        (
            {"remote": {"url": "http://x/v1", "model": "m"}, "speculative": {"ngram": {"method": "ngram"}}},
            "needs `remote:`",
        ),
        (
            {"model": "/m", "speculative": {"ngram": {"remote": {"url": "http://x/v1", "model": "m"}}}},
            "remote stages only",
        ),
        ({"remote": {"url": "http://x/v1", "model": "m", "timeout": 0}}, "timeout"),
        ({"remote": {"url": "http://x/v1", "model": "m", "key": "secret"}}, "key"),
    ],
)
def test_bad_remote_stages_are_refused(tmp_path, stage, problem):
    (tmp_path / "stages.yaml").write_text(json.dumps({"stages": {"s": stage}}))
    with pytest.raises(RegistryError, match=problem):
        load_registry(tmp_path / "stages.yaml", check_paths=False)


def test_a_remote_stage_needs_its_base_to_exist():
    with pytest.raises(ValueError, match="base 'nope' is not a stage"):
        Registry.model_validate({"stages": {"s": {"remote": {"url": "http://x/v1", "model": "m"}, "base": "nope"}}})


def test_remote_engines_do_not_count_against_the_live_engine_limit(tiny_family):
    from server.fake_engine import ScriptedEngine

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: the engines start, reported missing
    tok = str(tiny_family / "base")
    registry = Registry.model_validate(
        {
            "stages": {
                "local": {"model": "fake/base"},
                "a": {"remote": {"url": dead, "model": "a", "tokenizer": tok}},
                "b": {"remote": {"url": dead, "model": "b", "tokenizer": tok}},
            }
        }
    )
    pool = EnginePool(
        registry, lambda spec: engine_factory(spec) if spec.remote else ScriptedEngine(), max_live_engines=1
    )

    async def start():
        await pool.start()
        try:
            engines = pool.engines()
            assert set(engines) == {("fake/base", None), (f"{dead}#a", None), (f"{dead}#b", None)}
            assert "unreachable" in engines[(f"{dead}#a", None)].problem()
            assert engines[("fake/base", None)].started  # not evicted
        finally:
            await pool.shutdown()

    asyncio.run(start())


def test_streams_whose_bytes_are_already_here_take_turns():
    """A server's response that is already buffered is read without waiting: each stream must still
    let the others run between its chunks, or one backlog holds every other request back."""
    chunks = 50
    sse = (
        "".join(f'data: {{"choices": [{{"index": 0, "text": "t{i}"}}]}}\n\n' for i in range(chunks))
        + "data: [DONE]\n\n"
    )
    engine = RemoteEngine(RemoteSpec(url="http://gpu/v1", model="m"))
    engine._client = httpx.AsyncClient(
        transport=httpx.MockTransport(
            lambda request: httpx.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
        )
    )
    order: list[str] = []

    async def consume(name: str):
        async for batch in engine.generate([1, 2], SamplingSettings(max_tokens=chunks), name):
            order.extend(name for _ in batch)

    async def both():
        await asyncio.gather(consume("a"), consume("b"))
        await engine._client.aclose()

    asyncio.run(both())
    assert sorted(order) == ["a"] * chunks + ["b"] * chunks
    assert order.index("b") < 10  # b's first chunk came while a had most of its 50 still to go


# -- against real vLLM servers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def spec_vllm(tiny_family, tmp_path_factory):
    """A second remote: ngram speculation, per-request acceptance figures, no runtime LoRA loading."""
    config = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
    server = vllm_openai_server(
        tiny_family / "base",
        tmp_path_factory.mktemp("spec-vllm") / "vllm.log",
        served_model_name="base",
        extra_args=["--speculative-config", json.dumps(config), "--per-request-spec-decode-metrics", "summary"],
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "False", "VLLM_CPU_OMP_THREADS_BIND": "1"},
    )
    yield server
    server.stop()


def _remote(server, model="base", **extra) -> dict:
    return {"url": f"{server.url}/v1", "model": model, **extra}


@contextmanager
def remote_app(registry: dict, tmp_path, *, registry_path=None):
    """The real app in process with the server's engine factory (here: remote engines only) and a
    SQLite store; yields a TestClient once the pool has started (`/ready` may still say degraded)."""
    store = Store(f"sqlite:///{tmp_path / 'stagechat.db'}")
    pool = EnginePool(Registry.model_validate(registry), engine_factory)
    settings = Settings(data_dir=tmp_path, **({"registry_path": registry_path} if registry_path else {}))
    app = create_app(settings, pool, store=store, with_ui=False)
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while not pool.ready:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.05)
        client.pool = pool
        yield client


def chat(client, model, messages=MESSAGES, **kwargs):
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": messages, "max_tokens": 12, "temperature": 0, **kwargs},
    )


integration = pytest.mark.integration  # the tests below need real vLLM servers


@integration
def test_speculative_method_on_its_own_server_with_acceptance_figures(tiny_family, remote_vllm, spec_vllm, tmp_path):
    tok = str(tiny_family / "base")
    registry = {
        "stages": {
            "base": {
                "remote": _remote(remote_vllm, tokenizer=tok),
                "speculative": {"ngram": {"remote": _remote(spec_vllm)}},
            }
        }
    }
    with remote_app(registry, tmp_path) as client:
        off = chat(client, "base", REPEAT, max_tokens=32).json()
        assert "speculative" not in off
        fast = chat(client, "base", REPEAT, max_tokens=32, speculative="ngram").json()
        figures = fast["speculative"]
        assert figures["method"] == "ngram" and figures["draft_tokens"] > 0
        assert 0 <= figures["accepted_tokens"] <= figures["draft_tokens"]
        # lossless at temperature 0: the speculating server answers what the plain one does
        assert fast["choices"][0]["message"]["content"] == off["choices"][0]["message"]["content"]
        # streamed: the figures ride on the final chunk, as for in-process engines
        lines = [
            json.loads(line[6:])
            for line in chat(client, "base", REPEAT, max_tokens=32, speculative="ngram", stream=True).text.splitlines()
            if line.startswith("data: {")
        ]
        assert any(chunk.get("speculative", {}).get("draft_tokens", 0) > 0 for chunk in lines)
        # n > 1: vLLM gives no per-request figures, so there are none (not made-up ones)
        several = chat(client, "base", REPEAT, max_tokens=8, speculative="ngram", n=2, temperature=1, seed=3).json()
        assert len(several["choices"]) == 2 and "speculative" not in several
        # the generation log and ratings work as for any stage
        rated = client.post("/v1/feedback", json={"response_id": fast["id"], "rating": "up"})
        assert rated.status_code == 200 and rated.json()["stage"] == "base"
        record = client.app.state.store.get_generation(fast["id"])
        assert record.speculative_method == "ngram" and record.speculative["draft_tokens"] > 0


@integration
def test_a_missing_remote_is_named_while_the_other_stages_serve(tiny_family, remote_vllm, tmp_path):
    tok = str(tiny_family / "base")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    os.environ.pop("STAGECHAT_TEST_UNSET_KEY", None)
    registry = {
        "stages": {
            "base": {"remote": _remote(remote_vllm, tokenizer=tok)},
            "gone": {"remote": {"url": dead, "model": "base", "tokenizer": tok}},
            "keyed": {"remote": _remote(remote_vllm, "sft", tokenizer=tok, api_key_env="STAGECHAT_TEST_UNSET_KEY")},
        }
    }
    with remote_app(registry, tmp_path) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "degraded"
        missing = {m["model"]: m["error"] for m in ready.json()["missing"]}
        assert set(missing) == {f"{dead}#base", f"{remote_vllm.url}/v1#sft"}  # `base` is not missing
        assert "unreachable" in missing[f"{dead}#base"]
        assert "STAGECHAT_TEST_UNSET_KEY is not set" in missing[f"{remote_vllm.url}/v1#sft"]
        assert chat(client, "base").status_code == 200
        for stream in (False, True):
            r = chat(client, "gone", stream=stream)
            assert r.status_code == 503 and r.json()["error"]["code"] == "remote_unavailable"
            assert dead in r.json()["error"]["message"]
        assert chat(client, "keyed").status_code == 503


@integration
def test_adapter_stages_are_loaded_onto_the_remote_or_refused_clearly(tiny_family, remote_vllm, spec_vllm, tmp_path):
    tok = str(tiny_family / "base")
    stages = {
        "base": {"remote": _remote(remote_vllm, tokenizer=tok)},
        "sft": {"remote": _remote(remote_vllm, "sft"), "base": "base"},  # listed by the server's --lora-modules
        "fast": {"remote": _remote(spec_vllm, tokenizer=tok)},
    }
    path = tmp_path / "stages.yaml"
    path.write_text(json.dumps({"stages": stages}))
    with remote_app({"stages": stages}, tmp_path, registry_path=path) as client:
        assert client.get("/ready").status_code == 200
        # the next RLHF round adds adapter stages on both remotes; the registry reload serves them
        rounds = {
            "rlhf": {"adapter": str(tiny_family / "lora"), "base": "base"},
            "rlhf-fast": {"adapter": str(tiny_family / "lora"), "base": "fast"},
        }
        path.write_text(json.dumps({"stages": {**stages, **rounds}}))
        reloaded = client.post("/v1/admin/reload")
        assert reloaded.status_code == 200 and set(reloaded.json()["added"]) == {"rlhf", "rlhf-fast"}
        served = {m["id"] for m in httpx.get(f"{remote_vllm.url}/v1/models").json()["data"]}
        assert "rlhf" in served  # loaded through /v1/load_lora_adapter
        answers = {s: chat(client, s).json()["choices"][0]["message"]["content"] for s in ("base", "sft", "rlhf")}
        assert answers["rlhf"] == answers["sft"] != answers["base"]  # the same adapter file as `sft`
        refused = chat(client, "rlhf-fast")
        assert refused.status_code == 502
        assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in refused.json()["error"]["message"]
        ready = client.get("/ready").json()
        assert ready["status"] == "degraded" and "rlhf-fast" in json.dumps(ready["missing"])
        assert chat(client, "fast").status_code == 200  # the base of the refused adapter still serves


@integration
def test_a_slow_remote_is_a_504_and_a_returning_one_serves_again(tiny_family, spec_vllm, tmp_path):
    registry = {"stages": {"fast": {"remote": _remote(spec_vllm, tokenizer=str(tiny_family / "base"), timeout=2)}}}
    with remote_app(registry, tmp_path) as client:
        assert chat(client, "fast").status_code == 200
        os.killpg(spec_vllm.process.pid, signal.SIGSTOP)  # the server hangs: connections open, no answers
        try:
            r = chat(client, "fast")
            assert r.status_code == 504 and r.json()["error"]["code"] == "remote_timeout"
        finally:
            os.killpg(spec_vllm.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:  # the probe finds it again
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert chat(client, "fast").status_code == 200
