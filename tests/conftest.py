"""Factory fixtures shared by every test module.

- `fake_app`: the real FastAPI app on a pool of scripted engines (no model), for serving logic.
- `tiny_family`: a random tiny Llama checkpoint with a LoRA adapter and a registry for it, made once
  per session in seconds; integration tests serve it with real vLLM.
- `live_server`: `stagechat serve` in a subprocess on the tiny family, on a free loopback port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from server.fake_engine import ScriptedEngine
from server.pool import EnginePool
from server.registry import Registry
from server.settings import Settings

REPO = Path(__file__).resolve().parent.parent

FAKE_REGISTRY = {
    "stages": {
        "base": {"model": "fake/base", "description": "pre-trained only",
                 "speculative": {"ngram": {"method": "ngram", "num_speculative_tokens": 3}}},
        "sft": {"adapter": "fake/sft", "base": "base", "description": "instruction-tuned",
                "sampling": {"temperature": 0.5, "max_tokens": 5}},
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory) -> Path:
    """A random tiny checkpoint, a LoRA adapter on it, and `stages.yaml` serving both (+ ngram)."""
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
        "  sft:\n"
        "    adapter: ./lora\n"
        "    base: base\n"
        "    description: random LoRA on base\n"
    )
    return root


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s")


class LiveServer:
    def __init__(self, config: Path, data_dir: Path, extra_args: tuple[str, ...] = (), env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "server.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "STAGECHAT_DATA_DIR": str(data_dir), "VLLM_CPU_KVCACHE_SPACE": "1",
                    **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--config", str(config), "--port", str(self.port),
             "--log-level", "warning", *extra_args],
            cwd=REPO, env=full_env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_ready(self.url, self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"server failed to start; log:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="session")
def live_server(tiny_family, tmp_path_factory):
    server = LiveServer(tiny_family / "stages.yaml", tmp_path_factory.mktemp("live-data"), ("--no-ui",))
    yield server
    server.stop()
