"""The server's life cycle with real vLLM: SIGTERM or SIGINT shuts every engine process down.

SIGINT on a server of its own here; SIGTERM on the server test_load_faults.py restarts after its
kill -9 (one engine start fewer for the suite), through `assert_a_signal_stops_every_engine`.
"""

import signal
import time

import psutil
import pytest

from server.launcher import ChildServer, stagechat_server

pytestmark = pytest.mark.integration


def assert_a_signal_stops_every_engine(server: ChildServer, sig: signal.Signals) -> None:
    children = psutil.Process(server.process.pid).children(recursive=True)
    assert children, "the engine runs in child processes"
    server.process.send_signal(sig)
    server.process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while alive := [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]:
        assert time.monotonic() < deadline, f"orphan engine processes: {[c.name() for c in alive]}"
        time.sleep(0.2)


def test_sigint_shuts_down_the_server_and_leaves_no_engine_process(tiny_family, tmp_path):
    server = stagechat_server(tiny_family / "stages.yaml", tmp_path, ("--no-ui",))
    try:
        assert_a_signal_stops_every_engine(server, signal.SIGINT)
    finally:
        server.stop()
