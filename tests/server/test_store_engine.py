"""The store's schema and engine against real databases: the migrations create the tables, fresh
databases open safely from many processes at once, and SQLite keeps an acknowledged rating.
(`store` is parametrized over a SQLite file and a PostgreSQL server.)"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.store import Store
from server.store.schema import Base

REPO = Path(__file__).resolve().parents[2]


def test_schema_is_the_migrations_and_matches_the_models(store: Store):
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0006"
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    Store(store.url).close()  # opening again is a no-op upgrade


def test_processes_starting_together_on_a_fresh_database(store_url: str):
    """Each Store upgrades the schema on start; concurrent starts must not trip over each other."""
    errors: list[BaseException] = []

    def start() -> None:
        try:
            Store(store_url).close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    # Daemon threads with a bounded wait: without the schema lock PostgreSQL starts can block forever.
    threads = [threading.Thread(target=start, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "schema upgrades blocked each other"
    assert errors == []


def test_a_store_opening_while_another_writes_a_fresh_database_waits_its_turn(tmp_path):
    # SQLite refuses the switch to WAL at once ("database is locked", no busy timeout) while another
    # connection writes to a database not yet in WAL mode: what a schema upgrade racing a second
    # process's start looks like, made deterministic here.
    path = tmp_path / "fresh.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE early (x)")
    threading.Timer(0.3, writer.execute, ("COMMIT",)).start()
    store = Store(f"sqlite:///{path}")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
    finally:
        store.close()
        writer.close()


def test_sqlite_connections_are_durable(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'db' / 'stagechat.db'}")  # creates the folder
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    store.close()


def test_an_acknowledged_rating_survives_kill_9(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'stagechat.db'}"
    writer = textwrap.dedent(f"""
        import sys, time
        from server.store import GenerationRecord, Store, prompt_hash
        store = Store({url!r})
        messages = [{{"role": "user", "content": "hi"}}]
        store.record_generation(GenerationRecord(
            id="chatcmpl-k9", stage="sft", client_id="anonymous", kind="chat",
            prompt_hash=prompt_hash(messages), messages=messages, prompt=None, completion="hello",
            sampling={{}}, speculative_method=None, speculative=None, prompt_tokens=1,
            completion_tokens=1, finish_reason="stop", ttft_ms=None, duration_ms=1.0))
        fb = store.rate("chatcmpl-k9", "up", rater="alice", comment="keep me")
        print("acked", fb.id, flush=True)
        # Keep writing, so the kill lands mid-transaction, never at a quiet moment.
        i = 0
        while True:
            i += 1
            store.rate("chatcmpl-k9", "down", rater=f"r{{i}}")
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", writer], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("acked"), proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    acked_id = line.split()[1]

    store = Store(url)
    page, _ = store.list_feedback(rater="alice")
    assert [(fb.id, fb.rating, fb.comment) for fb in page] == [(acked_id, "up", "keep me")]
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    store.close()


def test_in_memory_sqlite_is_refused():
    with pytest.raises(ValueError, match="SQLite file"):
        Store("sqlite://")
