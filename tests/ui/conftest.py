"""Fixtures for the browser tests: headless Debian Chromium through Playwright, and the real app
(with its Gradio UI) served by uvicorn on a free loopback port.

- `browser`: one Chromium per session, the system one (`/usr/bin/chromium`); never a download.
- `fake_ui_server`: the app on scripted engines (per-token delay) and a real SQLite store, in a thread.
- `vllm_ui_server`: the app on real vLLM (tiny checkpoint) in a subprocess, which logs when each
  request's first token left the engine (`tests/ui/serve_instrumented.py`).
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from server.launcher import ChildServer, free_port
from server.settings import Settings
from server.store import Store

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(
            "Chromium not found at /usr/bin/chromium: install it with `make system-deps` (apt-get install chromium).",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


class ThreadServer:
    """uvicorn serving `app` in a daemon thread (its own event loop), stopped by `stop()`."""

    def __init__(self, app, port: int):
        import uvicorn

        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture
def fake_ui_server(fake_pool_factory, tmp_path):
    """Factory: the real app with its UI on scripted engines (`delay` s per token) and a SQLite store;
    `settings` (API keys, …) optional."""
    from server.app import create_app

    servers = []

    def make(registry=None, settings: Settings | None = None, **engine_kwargs):
        store = Store(f"sqlite:///{tmp_path / 'ui.db'}")
        pool = fake_pool_factory(registry, **engine_kwargs) if registry else fake_pool_factory(**engine_kwargs)
        app = create_app(settings or Settings(data_dir=tmp_path), pool, store=store, with_ui=True)
        server = ThreadServer(app, free_port())
        server.store, server.pool = store, pool
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


class InstrumentedServer(ChildServer):
    """`tests/ui/serve_instrumented.py` in a child process: the real app on vLLM, with first-token times."""

    def __init__(self, config: Path, data_dir: Path):
        self.first_tokens = data_dir / "first-tokens.jsonl"
        super().__init__(
            lambda port: [
                sys.executable,
                str(Path(__file__).with_name("serve_instrumented.py")),
                "--config",
                str(config),
                "--port",
                str(port),
                "--first-tokens",
                str(self.first_tokens),
            ],
            log=data_dir / "server.log",
            env={"STAGECHAT_DATA_DIR": str(data_dir)},
        )
        self.store = Store(f"sqlite:///{data_dir / 'stagechat.db'}", upgrade=False)

    def first_token_times(self) -> dict[str, float]:
        if not self.first_tokens.exists():
            return {}
        lines = [json.loads(line) for line in self.first_tokens.read_text().splitlines() if line]
        return {row["request_id"]: row["t"] for row in lines}

    def stop(self) -> int:
        self.store.close()
        return super().stop()


@pytest.fixture(scope="module")
def vllm_ui_server(tiny_family, tmp_path_factory):
    server = InstrumentedServer(tiny_family / "stages.yaml", tmp_path_factory.mktemp("ui-live"))
    yield server
    server.stop()
