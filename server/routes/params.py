"""Query parameters more than one router reads the same way.

What it knows: how a time filter (`since`, `until`) is written — Unix seconds or ISO 8601, naive
meaning UTC — and the 400 a malformed one gets. What it does not know: what the routes filter.
"""

from __future__ import annotations

from datetime import datetime, timezone

from server.errors import bad_request


def parse_time(value: str | None, param: str) -> datetime | None:
    """Unix seconds or ISO 8601 (naive means UTC); None stays None. A malformed value: a 400 naming `param`."""
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(float(value), timezone.utc)
    except (ValueError, OverflowError):
        pass
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise bad_request(f"'{param}' must be Unix seconds or an ISO 8601 time; got {value!r}.", param) from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t
