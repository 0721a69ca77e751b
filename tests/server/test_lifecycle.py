"""The server's life cycle with real vLLM: SIGTERM or SIGINT shuts every engine process down."""

import signal
import time

import psutil
import pytest

from server.launcher import stagechat_server

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_shuts_down_the_server_and_leaves_no_engine_process(tiny_family, tmp_path, sig):
    server = stagechat_server(tiny_family / "stages.yaml", tmp_path, ("--no-ui",))
    try:
        children = psutil.Process(server.process.pid).children(recursive=True)
        assert children, "the engine runs in child processes"
        server.process.send_signal(sig)
        server.process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while alive := [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]:
            assert time.monotonic() < deadline, f"orphan engine processes: {[c.name() for c in alive]}"
            time.sleep(0.2)
    finally:
        server.stop()
