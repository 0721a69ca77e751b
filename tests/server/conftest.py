"""Fixtures for the store tests: a real PostgreSQL server (session) and a fresh store per test.

The PostgreSQL server is the Debian package `make system-deps` installs; this starts a private
cluster in a temporary folder on a free port and stops it at the end of the session. PostgreSQL
refuses to run as root, so as root the cluster belongs to the `postgres` system user.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.store import GenerationRecord, Store, prompt_hash
from tests.records import chat_record

PG_MISSING = (
    "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb). The store tests run "
    "against a real PostgreSQL: install it with `make system-deps` (apt-get install postgresql)."
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], as_user: list[str]) -> None:
    result = subprocess.run(as_user + cmd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Start a throw-away PostgreSQL cluster; yields its admin URL without a database name."""
    initdbs = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not initdbs:
        pytest.fail(PG_MISSING, pytrace=False)
    bindir = Path(max(initdbs, key=lambda p: int(Path(p).parent.parent.name))).parent
    # Under /tmp, not pytest's 0700 tmp dirs, which the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="stagechat-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    # fsync off: a test cluster need not survive a crash, and fsync is slow on shared disks.
    _run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        as_user,
    )
    _run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        as_user,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], as_user)
        shutil.rmtree(root, ignore_errors=True)


_database_numbers = itertools.count()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server; dropped afterwards."""
    import psycopg

    name = f"stagechat_test_{next(_database_numbers)}"
    dsn = postgres_server.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"{postgres_server}/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'stagechat.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url)
    yield store
    store.close()


LogAnswer = Callable[..., GenerationRecord]


@pytest.fixture
def log_answer(store: Store) -> LogAnswer:
    """Record a chat answer in the store, as the serving layer would; returns the record."""

    def log_answer(
        question: str = "What is the capital of Kenya?",
        answer: str = "Nairobi.",
        *,
        stage: str = "sft",
        id: str | None = None,
        logged: bool = True,
        kind: str = "chat",
    ) -> GenerationRecord:
        messages = [{"role": "user", "content": question}]
        chat = kind == "chat"
        record = chat_record(
            messages,
            answer if logged else None,
            **({"id": id} if id else {}),
            stage=stage,
            kind=kind,
            prompt_hash=prompt_hash(messages if chat else question),
            messages=messages if logged and chat else None,
            prompt=question if logged and not chat else None,
            sampling={"temperature": 0.7, "top_p": 1.0, "max_tokens": 32},
            speculative_method="ngram",
            speculative={
                "method": "ngram",
                "draft_tokens": 10,
                "accepted_tokens": 7,
                "acceptance_rate": 0.7,
                "mean_acceptance_length": 2.4,
            },
            prompt_tokens=9,
            completion_tokens=3,
            ttft_ms=12.5,
            duration_ms=40.0,
        )
        store.record_generation(record)
        return record

    return log_answer
