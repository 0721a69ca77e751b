"""Backup and restore of the store's database: a SQLite file through SQLite's online backup API, a
PostgreSQL database through `pg_dump` / `pg_restore`.

What it knows: that SQLite's backup API copies a consistent snapshot while a server goes on writing
(the store runs in WAL mode, where a reader never blocks the writer; one backup step copies every
page under one read transaction, so it never restarts), and that the copy is written beside its
destination and renamed, so a reader never sees half a backup; that `pg_dump --format=custom` is a
consistent snapshot too (one repeatable-read transaction) and `pg_restore --single-transaction`
restores all or nothing; that a restore over a database holding rows is refused unless forced; that a
restored database is upgraded to the schema's head (a backup of an older version). Failures are
`BackupError`s whose message names the file or the database (without its password).

What it does not know: the command line (`cli/backup.py`), or which rows mean what.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from server.store.engine import BUSY_SECONDS, create_store_engine
from server.store.schema import upgrade_schema

VERSION_TABLE = "alembic_version"  # schema bookkeeping, not data
PG_MAGIC = b"PGDMP"  # the first bytes of a pg_dump custom-format archive


class BackupError(Exception):
    """A backup or restore that cannot be done; the message names the file or database."""


@dataclass
class Done:
    path: Path
    bytes: int
    seconds: float
    rows: dict[str, int]  # rows per table of what was backed up or restored

    def describe(self, verb: str) -> str:
        total = sum(self.rows.values())
        return f"{verb} {total} rows in {len(self.rows)} tables ({self.bytes} bytes, {self.seconds:.2f} s): {self.path}"


def shown(url: str) -> str:
    """The database URL as messages show it: never its password."""
    return sa.make_url(url).render_as_string(hide_password=True)


def _sqlite_path(url: str) -> Path | None:
    parsed = sa.make_url(url)
    return Path(parsed.database or "") if parsed.get_backend_name() == "sqlite" else None


def _supported(url: str) -> None:
    if sa.make_url(url).get_backend_name() not in ("sqlite", "postgresql"):
        raise BackupError(f"backup and restore know SQLite and PostgreSQL stores, not {shown(url)}")


def table_rows(engine: sa.Engine) -> dict[str, int]:
    """Rows per table (schema bookkeeping left out)."""
    with engine.connect() as conn:
        names = [t for t in sa.inspect(conn).get_table_names() if t != VERSION_TABLE]
        return {
            t: conn.execute(sa.select(sa.func.count()).select_from(sa.table(t))).scalar_one() for t in sorted(names)
        }


def _connectable(url: str) -> sa.Engine:
    """The database's engine, once it answered; `BackupError` naming it when it does not."""
    engine = sa.create_engine(url, connect_args={"connect_timeout": 5}) if _sqlite_path(url) is None else None
    try:
        engine = engine or create_store_engine(url)
        with engine.connect():
            pass
    except Exception as exc:  # refused, unknown host, no such database, bad password
        if engine is not None:
            engine.dispose()
        raise BackupError(f"cannot reach the database {shown(url)}: {str(exc).splitlines()[0]}") from exc
    return engine


# -- backup --------------------------------------------------------------------------------------


def backup(url: str, out: str | os.PathLike[str]) -> Done:
    """Copy the store at `url` to the file `out` (a SQLite file, or a pg_dump archive)."""
    out = Path(out)
    started = time.monotonic()
    _supported(url)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        path = _sqlite_path(url)
        if path is not None:
            _not_itself(path, out)
            _sqlite_backup(path, tmp)
            rows = _rows_of_file(tmp)
        else:
            engine = _connectable(url)
            try:
                rows = table_rows(engine)
            finally:
                engine.dispose()
            _pg(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", "--file", str(tmp)], url)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written backup left behind
        raise
    return Done(out, out.stat().st_size, time.monotonic() - started, rows)


def _not_itself(database: Path, file: Path) -> None:
    if database.exists() and file.exists() and database.resolve() == file.resolve():
        raise BackupError(f"{file} is the store's database itself: back up to (or restore from) another file")


def _sqlite_backup(path: Path, tmp: Path) -> None:
    if not path.is_file():
        raise BackupError(f"no SQLite database at {path}")
    tmp.unlink(missing_ok=True)
    source = sqlite3.connect(path, timeout=BUSY_SECONDS)
    try:
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)  # pages=-1: every page in one step, one consistent snapshot
            # The copy carries the source's WAL flag; one self-contained file is what a backup should be.
            target.execute("PRAGMA journal_mode=DELETE")
            if (check := target.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
                raise BackupError(f"the copy of {path} fails SQLite's check: {check}")
        finally:
            target.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"cannot back up {path}: {exc}") from exc
    finally:
        source.close()
    with open(tmp, "rb") as f:  # on disk before it takes the backup's name
        os.fsync(f.fileno())


def _rows_of_file(path: Path) -> dict[str, int]:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        return table_rows(engine)
    finally:
        engine.dispose()


# -- restore -------------------------------------------------------------------------------------


def restore(url: str, src: str | os.PathLike[str], *, force: bool = False) -> Done:
    """Replace the store at `url` with the backup `src`; refused over a database holding rows unless
    `force`. The schema is then upgraded to head."""
    src = Path(src)
    started = time.monotonic()
    _supported(url)
    if not src.is_file():
        raise BackupError(f"no backup file at {src}")
    path = _sqlite_path(url)
    if path is not None:
        _not_itself(path, src)
        _check_sqlite_backup(src)
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        with open(src, "rb") as f:
            if f.read(len(PG_MAGIC)) != PG_MAGIC:
                raise BackupError(f"{src} is not a pg_dump archive (made by `stagechat backup` of a PostgreSQL store)")
    engine = _connectable(url)
    try:
        held = table_rows(engine)
        if sum(held.values()) and not force:
            raise BackupError(
                f"the database {shown(url)} holds {sum(held.values())} rows; "
                "restoring would replace them: pass --force to do so"
            )
        if path is not None:
            engine.dispose()  # the restore writes through its own connection
            _sqlite_restore(src, path)
        else:
            _pg(
                ["pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction"]
                + ["--dbname", "{dsn}", str(src)],
                url,
            )
        upgrade_schema(engine)
        rows = table_rows(engine)
    finally:
        engine.dispose()
    return Done(src, src.stat().st_size, time.monotonic() - started, rows)


def _check_sqlite_backup(src: Path) -> None:
    try:
        conn = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{src} is not a SQLite database ({exc})") from exc
    if VERSION_TABLE not in names:
        raise BackupError(f"{src} is a SQLite database but not a stagechat store (no {VERSION_TABLE} table)")


def _sqlite_restore(src: Path, path: Path) -> None:
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    try:
        target = sqlite3.connect(path, timeout=BUSY_SECONDS)
        try:
            # Into a WAL database the page sizes must match; the store's are SQLite's default, and a
            # fresh target file takes the backup's. One step, one write transaction: all or nothing.
            source.backup(target)
        finally:
            target.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"cannot restore {src} into {path}: {exc}") from exc
    finally:
        source.close()


# -- PostgreSQL's tools --------------------------------------------------------------------------


def pg_tool(name: str) -> str:
    """`pg_dump` / `pg_restore`: the newest installed server's (it must be at least the server's
    version), else the one on PATH."""
    found = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    if found:
        return max(found, key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    tool = shutil.which(name)
    if tool is None:
        raise BackupError(f"{name} not found: install PostgreSQL's client tools (apt-get install postgresql-client)")
    return tool


def _pg(argv: list[str], url: str) -> None:
    """Run a PostgreSQL tool on the database at `url` (a `{dsn}` argument, else appended); the password
    goes through the environment, never the command line."""
    parsed = sa.make_url(url)
    env = {**os.environ, **({"PGPASSWORD": parsed.password} if parsed.password else {})}
    dsn = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    args: list[Any] = [pg_tool(argv[0]), *argv[1:]]
    args = [dsn if a == "{dsn}" else a for a in args] if "{dsn}" in args else [*args, dsn]
    env.setdefault("PGCONNECT_TIMEOUT", "5")
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise BackupError(f"{argv[0]} failed on {shown(url)}: {why}")
