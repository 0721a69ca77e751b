"""Factory fixtures shared by every test module.

- `fake_app`: the real FastAPI app on a pool of scripted engines (no model), for serving logic.
- `tiny_family`: a random tiny Llama checkpoint with a LoRA adapter and a registry for it, made once
  per session in seconds; integration tests serve it with real vLLM.
- `live_server`: `stagechat serve` in a child process on the tiny family (`server.launcher`).
- `assert_a_signal_stops_every_engine`: a signal to such a server ends it and every engine process.
"""

from __future__ import annotations

import glob
import os
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.fake_engine import ScriptedEngine
from server.launcher import ChildServer, stagechat_server
from server.pool import EnginePool
from server.registry import Registry
from server.settings import Settings

REPO = Path(__file__).resolve().parent.parent

FAKE_REGISTRY = {
    "stages": {
        "base": {
            "model": "fake/base",
            "description": "pre-trained only",
            "speculative": {"ngram": {"method": "ngram", "num_speculative_tokens": 3}},
        },
        "sft": {
            "adapter": "fake/sft",
            "base": "base",
            "description": "instruction-tuned",
            "sampling": {"temperature": 0.5, "max_tokens": 5},
        },
    }
}


@pytest.fixture
def fake_pool_factory():
    """Build an EnginePool whose engines are ScriptedEngines; `engines` records them by key."""

    def make(registry: dict = FAKE_REGISTRY, **engine_kwargs) -> EnginePool:
        engines: dict = {}

        def factory(spec):
            engine = ScriptedEngine(speculative_method=spec.speculative_method, **engine_kwargs)
            engines[(spec.model, spec.speculative_method)] = engine
            return engine

        pool = EnginePool(Registry.model_validate(registry), factory)
        pool.built = engines
        return pool

    return make


@pytest.fixture
def fake_app(fake_pool_factory, tmp_path):
    """Factory for the real app on scripted engines: `fake_app(**engine_kwargs) -> (app, pool)`."""

    def make(registry: dict = FAKE_REGISTRY, *, store=None, settings: Settings | None = None, **engine_kwargs):
        pool = fake_pool_factory(registry, **engine_kwargs)
        settings = settings or Settings(data_dir=tmp_path)
        return create_app(settings, pool, store=store, with_ui=False), pool

    return make


@contextmanager
def ready_client(app, pool):
    """A TestClient on `app` (lifespan running) once its engines are warm; `client.pool` is the pool."""
    with TestClient(app) as client:
        deadline = time.monotonic() + 5
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "scripted engines did not warm up"
            time.sleep(0.01)
        client.pool = pool
        yield client


def assert_a_signal_stops_every_engine(server: ChildServer, sig: signal.Signals) -> None:
    """Send `sig` to a running `stagechat serve`: it exits, and no engine process it started is left,
    nor the directory of vLLM's IPC sockets."""
    import psutil

    children = psutil.Process(server.process.pid).children(recursive=True)
    assert children, "the engine runs in child processes"
    ipc_dirs = glob.glob(f"{tempfile.gettempdir()}/stagechat-vllm-{server.process.pid}-*")
    assert len(ipc_dirs) == 1 and os.listdir(ipc_dirs[0]), "vLLM's sockets are in the server's own directory"
    server.process.send_signal(sig)
    server.process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while alive := [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]:
        assert time.monotonic() < deadline, f"orphan engine processes: {[c.name() for c in alive]}"
        time.sleep(0.2)
    assert not os.path.exists(ipc_dirs[0]), "the server left vLLM's IPC sockets behind"


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory) -> Path:
    """A random tiny checkpoint, a LoRA adapter on it, and `stages.yaml` serving both (+ ngram); the
    base stage takes tools (vLLM's hermes parser, which the tiny chat template's format matches)."""
    from models.tiny import make_tiny_adapter, make_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    make_tiny_checkpoint(root / "base")
    make_tiny_adapter(root / "base", root / "lora")
    (root / "stages.yaml").write_text(
        "engine: {max_model_len: 512, dtype: float32}\n"
        "stages:\n"
        "  base:\n"
        "    model: ./base\n"
        "    description: random tiny base\n"
        "    tool_parser: hermes\n"
        "  sft:\n"
        "    adapter: ./lora\n"
        "    base: base\n"
        "    description: random LoRA on base\n"
    )
    return root


@pytest.fixture(scope="session")
def live_server(tiny_family, tmp_path_factory):
    server = stagechat_server(tiny_family / "stages.yaml", tmp_path_factory.mktemp("live-data"), ("--no-ui",))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def remote_vllm(tiny_family, tmp_path_factory):
    """vLLM's own OpenAI server on the tiny checkpoint (served as `base`, its LoRA as `sft`, runtime
    LoRA loading allowed): the stand-in for a remote GPU node. Its engine keeps to core 1, as the
    in-process engines do, so the machine's other core stays free for the HTTP front ends."""
    from server.launcher import vllm_openai_server

    server = vllm_openai_server(
        tiny_family / "base",
        tmp_path_factory.mktemp("remote-vllm") / "vllm.log",
        served_model_name="base",
        lora_modules={"sft": tiny_family / "lora"},
        env={"VLLM_CPU_OMP_THREADS_BIND": "1"},
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def remote_live_server(tiny_family, remote_vllm, tmp_path_factory):
    """`stagechat serve` with `base` and `sft` served by `remote_vllm`, and no engine of its own.
    `engine_url` is where the remote engine's own metrics are."""
    config = tiny_family / "remote-stages.yaml"
    config.write_text(
        "engine: {max_model_len: 512, dtype: float32}\n"
        "stages:\n"
        "  base:\n"
        f"    remote: {{url: '{remote_vllm.url}/v1', model: base, tokenizer: ./base}}\n"
        "    description: random tiny base\n"
        "  sft:\n"
        f"    remote: {{url: '{remote_vllm.url}/v1', model: sft}}\n"
        "    base: base\n"
        "    description: random LoRA on base\n"
    )
    server = stagechat_server(config, tmp_path_factory.mktemp("remote-live-data"), ("--no-ui",))
    server.engine_url = remote_vllm.url
    yield server
    server.stop()
