"""What a full disk or a read-only data directory looks like, and how the API and the CLI say so.

What it knows: the shapes storage refusals take when they reach us — an `OSError` with `ENOSPC` /
`EDQUOT` (full) or `EROFS` / `EACCES` / `EPERM` (cannot write), SQLite's `SQLITE_FULL` ("database or
disk is full") and `SQLITE_READONLY` / `SQLITE_CANTOPEN`, PostgreSQL's SQLSTATE 53100 (disk_full) and
25006 (read_only_sql_transaction) — found anywhere along the exception's chain (SQLAlchemy wraps the
driver's error in `.orig`; `raise ... from` sets `__cause__`). What the server answers for each: 507
Insufficient Storage for a full disk (retrying will not help until someone frees space), 503 with
`Retry-After` for storage it may not write (an operator can remount it), both naming the cause and
the path when known. What it does not know: which request or command failed, or how to free space.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from server.errors import APIError

FULL = "full"
READ_ONLY = "read_only"
# Seconds a client should wait before retrying a write to storage it may not write now.
READ_ONLY_RETRY_AFTER = 30

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
_SQLITE = {"SQLITE_FULL": FULL, "SQLITE_READONLY": READ_ONLY, "SQLITE_CANTOPEN": READ_ONLY}
_SQLITE_MESSAGES = {
    "database or disk is full": FULL,
    "readonly database": READ_ONLY,
    "unable to open database file": READ_ONLY,
}
_PG_SQLSTATES = {"53100": FULL, "25006": READ_ONLY}


@dataclass(frozen=True)
class StorageFault:
    """Storage refused a write: `kind` is FULL or READ_ONLY; `path` is the file or folder, when known."""

    kind: str
    path: str | None = None

    def describe(self) -> str:
        """One line naming the cause and the path, e.g. "no space left on device (/data/stagechat.db)"."""
        cause = "no space left on device" if self.kind == FULL else "storage is read-only (or not writable)"
        return f"{cause} ({self.path})" if self.path else cause


def storage_fault(exc: BaseException, path: str | None = None, *, database: str | None = None) -> StorageFault | None:
    """The storage fault behind `exc` (looking through its chain), or None when it is something else.
    `path`: the file being written, for an `OSError` that does not name one (a failed `write()`);
    `database`: the database file, for the database driver's refusals."""
    for e in _chain(exc):
        kind = _kind(e)
        if kind is not None:
            if isinstance(e, OSError):
                return StorageFault(kind, str(e.filename) if e.filename else path)
            return StorageFault(kind, database)
    return None


def _chain(exc: BaseException):
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]


def _kind(e: BaseException) -> str | None:
    sqlite_name = getattr(e, "sqlite_errorname", None)
    if sqlite_name in _SQLITE:
        return _SQLITE[sqlite_name]
    pgcode = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
    if pgcode in _PG_SQLSTATES:
        return _PG_SQLSTATES[pgcode]
    if isinstance(e, OSError):  # sqlite3.Error is not an OSError: errno here is the operating system's
        if e.errno in _FULL_ERRNOS:
            return FULL
        if e.errno in _READ_ONLY_ERRNOS:
            return READ_ONLY
        return None
    if type(e).__module__ == "sqlite3":  # older SQLite bindings without sqlite_errorname
        text = str(e)
        for words, kind in _SQLITE_MESSAGES.items():
            if words in text:
                return kind
    return None


def storage_error(fault: StorageFault, rid: str | None = None) -> APIError:
    """The API's answer to a storage fault: 507 (full) or 503 + Retry-After (read-only), naming the cause."""
    where = f" (request id {rid})" if rid else ""
    headers = {"x-request-id": rid} if rid else {}
    if fault.kind == FULL:
        return APIError(
            507,
            f"The server cannot store this: {fault.describe()}. Nothing was stored{where}.",
            type="server_error",
            code="storage_full",
            headers=headers or None,
        )
    return APIError(
        503,
        f"The server cannot store this now: {fault.describe()}. Nothing was stored; retry later{where}.",
        type="service_unavailable",
        code="storage_read_only",
        headers={"Retry-After": str(READ_ONLY_RETRY_AFTER), **headers},
    )


def database_path(app: Any) -> str | None:
    """The SQLite file of `app`'s store (what a fault names when the driver does not), else None."""
    return sqlite_file(str(getattr(getattr(getattr(app, "state", None), "store", None), "url", "") or ""))


def sqlite_file(url: str) -> str | None:
    """The file of a `sqlite:///path` URL; None for other databases and in-memory SQLite."""
    return url.split(":///", 1)[1] if url.startswith("sqlite:///") and len(url) > len("sqlite:///") else None
