"""Query parameters more than one router reads the same way, and how the OpenAPI schema states them.

What it knows: how a time filter (`since`, `until`) is written — Unix seconds or ISO 8601, naive
meaning UTC — the 400 a malformed one gets, and the schema that says so (`TIME`, `CURSOR`), so a client
generating requests from the spec sends only times the server reads; and that a query parameter a
route does not read is a 400 naming it (`only`), never ignored. What it does not know: what the
routes filter.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from pydantic import WithJsonSchema
from starlette.requests import Request

from server.errors import bad_request

# The schema states what is read: an RFC 3339 date-time, or Unix seconds written as a JSON number.
# The server also reads the other ISO 8601 forms Python does (a date, a naive time meaning UTC):
# the description says so; a schema cannot list them all. Anything else is a 400.
UNIX_SECONDS_PATTERN = r"^-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$"
TIME_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "string", "pattern": UNIX_SECONDS_PATTERN, "description": "Unix seconds"},
    ],
    "examples": ["2026-01-01T00:00:00Z", "1767225600"],
}
# Used as `since: Annotated[str | None, Query(description=...), TIME] = None`: inside `Annotated`, next
# to the `Query`, FastAPI states this schema as it is (as a `= Query(...)` default it drops it).
TIME = WithJsonSchema(TIME_SCHEMA)
# A list cursor: the `last_id` of the previous page (never empty; an id naming nothing is a 400).
CURSOR_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": r"^[a-z]+-[0-9a-f]+$"}
CURSOR = WithJsonSchema(CURSOR_SCHEMA)
# The earliest and latest instants a filter compares: times beyond them (Unix seconds past year
# 9999, year 1 at +14:00) filter as these do, before or after every stored time.
_EARLIEST = datetime(1, 1, 2, tzinfo=timezone.utc)
_LATEST = datetime(9999, 12, 30, tzinfo=timezone.utc)


def parse_time(value: str | None, param: str) -> datetime | None:
    """Unix seconds or ISO 8601 (naive means UTC); None stays None. A malformed value: a 400 naming `param`."""
    if value is None:
        return None
    if re.fullmatch(UNIX_SECONDS_PATTERN, value):  # not float(): it also reads " 1", "1_0", "nan", "inf"
        seconds = float(value)
        try:
            return datetime.fromtimestamp(seconds, timezone.utc)
        except (ValueError, OverflowError, OSError):  # beyond years 1..9999
            return _EARLIEST if seconds < 0 else _LATEST
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise bad_request(f"'{param}' must be Unix seconds or an ISO 8601 time; got {value!r}.", param) from None
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t
    try:
        return t.astimezone(timezone.utc)
    except OverflowError:
        return _EARLIEST if t.year == 1 else _LATEST


# Read by server.auth (for clients that cannot set headers): every route takes it.
AUTH_PARAMS = ("api_key",)


def only(request: Request, known: tuple[str, ...] = ()) -> None:
    """A 400 naming the first query parameter the route does not read (as `errors.py` answers a body
    field it does not honour)."""
    for name in request.query_params:
        if name not in known and name not in AUTH_PARAMS:
            reads = f"this route reads {', '.join(known)}" if known else "this route takes none"
            raise bad_request(f"Unsupported parameter '{name}': {reads}.", param=name, code="extra_forbidden")
