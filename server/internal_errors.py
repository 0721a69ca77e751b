"""The last line: an exception nobody handled becomes an OpenAI error body, never a plain-text 500.

What it knows: a request id for each failure (the client's `x-request-id` when it sent a usable one,
else a fresh one), which goes in the body's message, the `x-request-id` response header and the log
line that carries the traceback, so an operator finds the one from the other; and how a database that
cannot be reached becomes a 503 with `Retry-After` (SQLAlchemy's connection errors: the store said
nothing more specific); a full disk or read-only storage is a 507 / 503 naming the cause
(`server.storage_errors`).

`InternalErrorMiddleware` sits inside Starlette's `ServerErrorMiddleware` (which answers in plain
text, and which a handler for `Exception` would only feed: it re-raises), around everything else
(routes and the project's middleware). What it does not know: the routes, or what the error meant.
Once a response has started (a stream), there is no status left to send: front doors that stream
report failures in-band themselves (`server.routes.openai._sse`, `server.routes.ws`).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any

from server.errors import APIError
from server.storage_errors import database_path, storage_error, storage_fault

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_USABLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Seconds a client should wait before retrying while the database is unreachable.
STORE_RETRY_AFTER = 5


def request_id(headers: Any = None) -> str:
    """The client's request id when usable (safe to echo in a header and a log line), else a new one."""
    given = headers.get(REQUEST_ID_HEADER) if headers is not None else None
    return given if given and _USABLE_ID.fullmatch(given) else f"req-{uuid.uuid4().hex}"


def internal_error(rid: str) -> APIError:
    return APIError(
        500,
        f"The server failed on this request (request id {rid}); it has been logged.",
        type="server_error",
        code="internal_error",
        headers={"x-request-id": rid},
    )


def database_unavailable(rid: str) -> APIError:
    return APIError(
        503,
        f"The database is unreachable; retry shortly (request id {rid}).",
        type="service_unavailable",
        code="store_unavailable",
        headers={"Retry-After": str(STORE_RETRY_AFTER), "x-request-id": rid},
    )


def is_database_outage(exc: BaseException) -> bool:
    """SQLAlchemy's word that the database could not be reached (or the connection broke)."""
    try:
        from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    except ImportError:
        return False
    return isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def unexpected_error(exc: Exception, *, app, what: str, rid: str | None = None) -> APIError:
    """What a client gets for an exception nobody expected, logged with its traceback and request id:
    507/503 for a full disk or read-only storage, 503 for a database outage, else a 500."""
    rid = rid or request_id()
    fault = storage_fault(exc, database=database_path(app))
    outage = fault is None and is_database_outage(exc)
    cause = f" ({fault.describe()})" if fault else " (database unreachable)" if outage else ""
    log.error("request %s: %s failed%s: %s: %s", rid, what, cause, type(exc).__name__, exc, exc_info=exc)
    return storage_error(fault, rid) if fault else database_unavailable(rid) if outage else internal_error(rid)


def _headers_of(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


class InternalErrorMiddleware:
    """Pure ASGI (no per-request cost beyond one wrapper): an exception out of the app before the
    response started becomes a JSON 500 (or 503 for a database outage) with a request id."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            what = f"{scope.get('method')} {scope.get('path')}"
            error = unexpected_error(exc, app=scope.get("app"), what=what, rid=request_id(_headers_of(scope)))
            if started:  # the status went out already: nothing to do but let the server close it
                raise
            body = json.dumps(error.body()).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (error.headers or {}).items()]
            await send({"type": "http.response.start", "status": error.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
