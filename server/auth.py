"""Who is calling: API keys, the client id stored with generations and ratings, the admin check.

Keys come from `Settings.api_keys` (none configured: anyone may call). The client id is a short hash
of the key, so the store never holds a key; without keys every caller is `anonymous`.
"""

from __future__ import annotations

import hashlib

from starlette.requests import HTTPConnection

from server.errors import APIError, unauthorized
from server.settings import Settings

ANONYMOUS = "anonymous"


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return conn.query_params.get("api_key")  # browsers cannot set headers on a WebSocket


def client_id_for(key: str | None) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else ANONYMOUS


def authenticate(conn: HTTPConnection, settings: Settings) -> str:
    """The caller's client id; 401 when keys are configured and the caller has none of them."""
    key = bearer_token(conn)
    if settings.api_keys or settings.admin_key:
        valid = settings.api_keys | ({settings.admin_key} if settings.admin_key else set())
        if settings.api_keys and key not in valid:
            raise unauthorized()
    return client_id_for(key)


def require_admin(conn: HTTPConnection, settings: Settings) -> None:
    if settings.admin_key and bearer_token(conn) != settings.admin_key:
        raise APIError(401, "This endpoint needs the admin key.", type="authentication_error", code="invalid_admin_key")
