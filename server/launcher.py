"""Run a server in a child process on a free loopback port and wait until it is ready.

For the tests, benchmarks and scripts that need a real `stagechat serve` (or vLLM's own server) to
talk to. It knows processes, ports and readiness; nothing about what the server serves.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from server.settings import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildServer:
    """`command(port)` started in its own process group; ready when `ready_path` answers 200.

    vLLM's IPC sockets go where the child puts them (`stagechat serve`: a directory of its own, which
    it removes at exit), or with `ipc_dir` to a directory made here and removed by `stop`: for vLLM's
    own server, and for a server that will be killed."""

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        ready_path: str = "/ready",
        timeout: float = 300,
        ipc_dir: bool = False,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        # A few GiB of KV cache, not vLLM's default of 92% of the machine's memory per engine.
        full_env = {k: v for k, v in os.environ.items() if k != "VLLM_RPC_BASE_PATH"}
        full_env["VLLM_CPU_KVCACHE_SPACE"] = "1"
        # Short (a socket's path has at most 107 bytes), and not under a test's deep tmp_path.
        self.ipc_dir = tempfile.mkdtemp(prefix="stagechat-ipc-") if ipc_dir else None
        if self.ipc_dir is not None:
            full_env["VLLM_RPC_BASE_PATH"] = self.ipc_dir
        full_env.update(env or {})
        with log.open("w") as out:
            self.process = subprocess.Popen(
                list(command(self.port)),
                cwd=REPO_ROOT,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait(ready_path, began + timeout)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{exc}; the server's log ends:\n{log.read_text()[-4000:]}") from None
        self.ready_seconds = time.monotonic() - began

    def _wait(self, path: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{self.url}{path} not ready in time")

    def stop(self) -> int:
        """SIGTERM to the server, which shuts its engines down; its whole group is killed only if
        it has not exited after a minute."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.ipc_dir is not None:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)
        return self.process.returncode


def stagechat_server(
    config: Path,
    data_dir: Path,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 300,
    ipc_dir: bool = False,
) -> ChildServer:
    """`stagechat serve --config CONFIG` with its data (store, rounds) in `data_dir`; `timeout`: seconds
    it may take to answer `/ready` (a busy machine can take minutes to start an engine); `ipc_dir`: see
    `ChildServer`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return ChildServer(
        lambda port: [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra_args,
        ],
        log=data_dir / "server.log",
        env={"STAGECHAT_DATA_DIR": str(data_dir), **(env or {})},
        timeout=timeout,
        ipc_dir=ipc_dir,
    )


def vllm_openai_server(
    model: Path,
    log: Path,
    *,
    served_model_name: str,
    lora_modules: dict[str, Path] | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> ChildServer:
    """vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`) on `model`, with
    runtime LoRA loading allowed: the stand-in for a remote GPU node that serves remote stages."""
    loras = [f"{name}={path}" for name, path in (lora_modules or {}).items()]
    return ChildServer(
        lambda port: [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            served_model_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "512",
            "--dtype",
            "float32",
            *(["--enable-lora", "--max-lora-rank", "8", "--max-loras", "4", "--lora-modules", *loras] if loras else []),
            *extra_args,
        ],
        log=log,
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **(env or {})},
        ready_path="/v1/models",
        ipc_dir=True,
    )


def engine_worker(server_pid: int):
    """The vLLM worker process of a server's (first) engine, as `kill -9` by the OOM killer would find
    it (vLLM titles them VLLM::EngineCore → VLLM::Worker); None when the server has no engine yet."""
    import psutil

    def title(p: psutil.Process) -> str:
        try:
            return " ".join(p.cmdline()) + " " + p.name()
        except psutil.Error:
            return ""

    cores = [p for p in psutil.Process(server_pid).children() if "EngineCore" in title(p)]
    if not cores:
        return None
    children = cores[0].children()
    workers = [p for p in children if "Worker" in title(p)] or [
        p for p in children if "resource_tracker" not in title(p)
    ]
    return workers[0] if workers else None
