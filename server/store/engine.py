"""The store's database engine: a SQLAlchemy `Engine` for a URL, with the SQLite settings that make
an acknowledged rating durable and let readers run beside the writer.

What it knows: SQLite's pragmas (WAL, synchronous=FULL, foreign keys, busy timeout), that writers
begin with `BEGIN IMMEDIATE` (the execution option `sqlite_begin`), and PostgreSQL's pre-ping pool
with a bounded connect (a database that does not answer is an error in seconds, not a hang).

What it does not know: tables or the schema's migrations (`server/store/schema.py`), or queries.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

# How long a SQLite connection waits for another's write lock (or for its turn to switch to WAL).
BUSY_SECONDS = 30
# How long a new PostgreSQL connection may take (libpq's connect_timeout): a host that drops packets
# (a database behind a dead network) fails the request with a 503 after this, instead of hanging it.
PG_CONNECT_SECONDS = 5


def _sqlite_engine(url: str) -> Engine:
    # A file database needs its folder; ":memory:" would be one database per connection, so refuse it.
    database = sa.make_url(url).database
    if not database or database == ":memory:":
        raise ValueError("the store needs a SQLite file, not an in-memory database")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (below), so sqlite3 must not; see SQLAlchemy's pysqlite notes.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        # WAL lets readers (exports) run beside the writer; synchronous=FULL fsyncs the WAL on every
        # commit, so an acknowledged rating survives kill -9 and power loss.
        _set_wal(cursor, BUSY_SECONDS)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Writers take the write lock up front (BEGIN IMMEDIATE): a deferred transaction that reads
        # and then writes can fail with SQLITE_BUSY at once instead of waiting its turn.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _set_wal(cursor: Any, wait_seconds: float) -> None:
    """`PRAGMA journal_mode=WAL`, waiting its turn. On a database not yet in WAL mode (a fresh one)
    that another connection is writing to (a schema upgrade: two processes starting together),
    SQLite refuses the switch at once with "database is locked", without the busy timeout."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def create_store_engine(url: str) -> Engine:
    if sa.make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    parsed = sa.make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = PG_CONNECT_SECONDS  # the URL's own setting wins
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
