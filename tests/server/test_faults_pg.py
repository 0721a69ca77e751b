"""PostgreSQL stops during ratings (`pg_ctl stop -m fast`, then `start`): every rating meanwhile gets a
503 JSON error with Retry-After, never a connection reset or a plain-text 500; ratings work again once
the database is back; every rating the server acknowledged is stored. The app runs on scripted engines
under uvicorn on loopback (a real socket, so a reset would show); the database is a real PostgreSQL
cluster of this module's own (the session's shared one must not stop under other tests).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from server.launcher import free_port
from server.settings import Settings
from server.store import Store
from tests.server.conftest import PG_MISSING, _free_port, _run

pytestmark = pytest.mark.postgres

CHAT = {"model": "base", "messages": [{"role": "user", "content": "Capital of Kenya?"}], "max_tokens": 2}


class Cluster:
    """A throw-away PostgreSQL cluster that a test may stop and start."""

    def __init__(self):
        initdbs = glob.glob("/usr/lib/postgresql/*/bin/initdb")
        if not initdbs:
            pytest.fail(PG_MISSING, pytrace=False)
        self.bindir = Path(max(initdbs, key=lambda p: int(Path(p).parent.parent.name))).parent
        self.root = Path(tempfile.mkdtemp(prefix="stagechat-pg-faults-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data, self.port = self.root / "data", _free_port()
        _run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            self.as_user,
        )
        self.start()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        _run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ],
            self.as_user,
        )

    def stop(self, mode: str = "fast") -> None:
        _run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"], self.as_user)

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster():
    c = Cluster()
    yield c
    c.remove()


@pytest.fixture
def served(fake_app, cluster, tmp_path):
    """The app (scripted engines, the cluster's store) under uvicorn on a loopback port: (url, store)."""
    store = Store(cluster.url)
    app, _ = fake_app(store=store, settings=Settings(data_dir=tmp_path))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/ready").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the app did not come up"
        time.sleep(0.05)
    yield url, store
    server.should_exit = True
    thread.join(10)
    store.close()


def test_ratings_while_postgresql_stops_get_503_json_then_work_and_nothing_acknowledged_is_lost(served, cluster):
    url, store = served
    acked: set[str] = set()
    refused: list[httpx.Response] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        answers = [client.post("/v1/chat/completions", json=CHAT).json()["id"] for _ in range(150)]
        pending = iter(answers)

        def rate() -> httpx.Response:
            r = client.post("/v1/feedback", json={"response_id": next(pending), "rating": "up"})
            if r.status_code == 200:
                acked.add(r.json()["id"])
            else:
                refused.append(r)
            return r

        for _ in range(5):
            assert rate().status_code == 200
        stopping = threading.Thread(target=cluster.stop)
        stopping.start()  # ratings go on while the server shuts down
        while stopping.is_alive() or not refused:
            rate()  # an httpx error here (a reset) fails the test
            time.sleep(0.02)
        ready = client.get("/ready")
        assert ready.status_code == 503, ready.text
        cluster.start()
        deadline = time.monotonic() + 30
        while rate().status_code != 200:  # polled: the pool reconnects on its own
            assert time.monotonic() < deadline, "ratings did not recover"
            time.sleep(0.02)
        for _ in range(3):
            assert rate().status_code == 200
        assert client.get("/ready").status_code == 200
    assert refused, "the outage was never seen"
    for r in refused:
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
        assert r.json()["error"]["code"] in ("store_unavailable", "storage_read_only"), r.text
    stored = {fb.id for fb in store.list_feedback(limit=1000)[0]}
    assert acked <= stored and len(acked) >= 9
