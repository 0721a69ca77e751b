"""`stagechat backup` / `stagechat restore` (`server/store/backup.py`): a restore that loses nothing.

Ratings, votes and conversations are written, backed up, restored into a fresh database and every
table's rows compared, on SQLite and on PostgreSQL (pg_dump / pg_restore); on SQLite also while a
writer thread keeps writing (the online backup is one consistent snapshot: every row written before
it began, the writer's rows a prefix of what it wrote, no row that was never written). A restore over
a database holding rows is refused without --force; a missing file or an unreachable database is
exit 2 naming it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cli.main import main
from server.store import Store
from tests.server.conftest import postgres_server, postgres_url  # noqa: F401 - fixtures
from tests.server.raters_data import OTHER, RATER, logged, write_everything


def rows_of(url: str) -> dict[str, list[tuple]]:
    """Every table's rows, sorted, schema bookkeeping (alembic_version) included."""
    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {
                name: sorted((tuple(r) for r in conn.execute(sa.select(table))), key=repr)
                for name, table in meta.tables.items()
            }
    finally:
        engine.dispose()


def filled(url: str) -> Store:
    store = Store(url)
    write_everything(store, RATER, OTHER)
    return store


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'live.db'}"


def test_sqlite_restore_loses_nothing(sqlite_url: str, tmp_path: Path, capsys):
    filled(sqlite_url).close()
    out, fresh = tmp_path / "backup.db", f"sqlite:///{tmp_path / 'fresh' / 'restored.db'}"
    assert main(["backup", str(out), "--database-url", sqlite_url]) == 0
    assert "backed up" in capsys.readouterr().out
    assert main(["restore", str(out), "--database-url", fresh]) == 0
    source, restored = rows_of(sqlite_url), rows_of(fresh)
    assert set(source) >= {"feedback", "arena_votes", "conversations", "conversation_messages", "alembic_version"}
    assert all(source[t] for t in ("generations", "feedback", "arena_votes", "conversations"))
    assert restored == source
    Store(fresh).close()  # a restored store opens (and is at the schema's head)


def test_sqlite_backup_while_a_writer_writes_is_one_snapshot(sqlite_url: str, tmp_path: Path):
    store = filled(sqlite_url)
    before = rows_of(sqlite_url)
    stop, written = threading.Event(), []

    def writer() -> None:  # an answer and its rating, two transactions each, as the server writes them
        for n in itertools.count():
            rid = logged(store, "writer", f"Question {n}?", f"Answer {n}.")
            store.rate(rid, "up", rater="writer")
            written.append(rid)
            if stop.is_set() and n >= 20:
                return

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 10:  # the backup starts with the writer well under way
            stop.wait(0.01)
        out = tmp_path / "hot.db"
        assert main(["backup", str(out), "--database-url", sqlite_url]) == 0
        during = len(written)
    finally:
        stop.set()
        thread.join()
    store.close()
    fresh = f"sqlite:///{tmp_path / 'restored.db'}"
    assert main(["restore", str(out), "--database-url", fresh]) == 0
    after, restored = rows_of(sqlite_url), rows_of(fresh)
    assert len(written) > during  # the writer went on after the backup
    for table, rows in restored.items():
        had, got, has = ({repr(r) for r in x} for x in (before[table], rows, after[table]))  # JSON values: lists
        assert had <= got, table  # nothing written before the backup is lost
        assert got <= has, table  # nothing that was never written appears
    ids = {row[0] for row in restored["generations"]}
    kept = [rid for rid in written if rid in ids]
    assert kept == written[: len(kept)] and len(kept) >= 10  # a prefix of what the writer wrote
    assert len(kept) < len(written)
    rated = [r for r in restored["feedback"] if r[3] == "writer"]
    assert len(kept) - 1 <= len(rated) <= len(kept)  # at most the last answer's rating not yet in


def test_restore_refuses_a_database_with_rows_without_force(sqlite_url: str, tmp_path: Path, capsys):
    filled(sqlite_url).close()
    out = tmp_path / "backup.db"
    assert main(["backup", str(out), "--database-url", sqlite_url]) == 0
    store = Store(sqlite_url)
    logged(store, "late", "After the backup?", "Yes.")
    store.close()
    capsys.readouterr()
    assert main(["restore", str(out), "--database-url", sqlite_url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stagechat restore: the database sqlite:///") and "--force" in err
    assert any(r[0].startswith("chatcmpl") and r[2] == "late" for r in rows_of(sqlite_url)["generations"])
    assert main(["restore", str(out), "--database-url", sqlite_url, "--force"]) == 0
    assert not any(r[2] == "late" for r in rows_of(sqlite_url)["generations"])  # the backup's state again
    assert rows_of(sqlite_url) == rows_of(f"sqlite:///{out}")


def test_missing_files_and_bad_backups_are_exit_2_naming_them(tmp_path: Path, capsys):
    url = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["backup", str(tmp_path / "b.db"), "--database-url", url]) == 2
    assert capsys.readouterr().err.strip() == f"stagechat backup: no SQLite database at {tmp_path / 'none.db'}"
    assert not (tmp_path / "b.db").exists() and not (tmp_path / ".b.db.tmp").exists()
    assert main(["restore", str(tmp_path / "nope.db"), "--database-url", url]) == 2
    assert capsys.readouterr().err.strip() == f"stagechat restore: no backup file at {tmp_path / 'nope.db'}"
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all, but long enough to have a header, surely" * 10)
    assert main(["restore", str(junk), "--database-url", url]) == 2
    assert f"{junk} is not a SQLite database" in capsys.readouterr().err
    assert main(["restore", str(junk), "--database-url", "postgresql+psycopg://u:secret@127.0.0.1:1/db"]) == 2
    assert f"{junk} is not a pg_dump archive" in capsys.readouterr().err


def test_the_database_itself_is_no_backup_file(sqlite_url: str, capsys):
    filled(sqlite_url).close()
    before = rows_of(sqlite_url)
    path = sqlite_url.removeprefix("sqlite:///")
    assert main(["backup", path, "--database-url", sqlite_url]) == 2
    assert main(["restore", path, "--database-url", sqlite_url, "--force"]) == 2
    assert capsys.readouterr().err.count("is the store's database itself") == 2
    assert rows_of(sqlite_url) == before


def test_an_unreachable_database_is_exit_2_naming_it(tmp_path: Path, capsys):
    url = "postgresql+psycopg://user:secret@127.0.0.1:1/stagechat"
    assert main(["backup", str(tmp_path / "b.dump"), "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stagechat backup: cannot reach the database postgresql+psycopg://user:***@127.0.0.1:1/")
    assert "secret" not in err


# -- PostgreSQL: pg_dump / pg_restore -----------------------------------------------------------


@pytest.fixture
def second_postgres(postgres_server: str) -> Iterator[str]:  # noqa: F811 - the fixture
    import psycopg

    dsn = postgres_server.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE stagechat_restored")
    yield f"{postgres_server}/stagechat_restored"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE stagechat_restored WITH (FORCE)")


@pytest.mark.postgres
def test_postgres_restore_loses_nothing(postgres_url: str, second_postgres: str, tmp_path: Path, capsys):  # noqa: F811
    filled(postgres_url).close()
    out = tmp_path / "store.dump"
    assert main(["backup", str(out), "--database-url", postgres_url]) == 0
    assert out.read_bytes().startswith(b"PGDMP")
    Store(second_postgres).close()  # a fresh database at the schema's head, no rows: not refused
    assert main(["restore", str(out), "--database-url", second_postgres]) == 0
    source = rows_of(postgres_url)
    assert all(source[t] for t in ("generations", "feedback", "arena_votes", "conversations"))
    assert rows_of(second_postgres) == source
    # Rows there now: refused without --force, then replaced with it.
    store = Store(second_postgres)
    logged(store, "late", "After?", "Yes.")
    store.close()
    capsys.readouterr()
    assert main(["restore", str(out), "--database-url", second_postgres]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["restore", str(out), "--database-url", second_postgres, "--force"]) == 0
    assert rows_of(second_postgres) == source
