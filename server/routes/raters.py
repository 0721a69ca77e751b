"""A rater's data over HTTP: download everything one gave as one JSON document, or delete it.

    GET    /v1/raters/me/data        everything the caller's key gave (`Store.rater_data`)
    DELETE /v1/raters/me/data        delete it, all or nothing; answered once committed
    GET    /v1/raters/{rater}/data   the same for any rater (a client id): the admin, or that rater
    DELETE /v1/raters/{rater}/data

Who may: a key reads and deletes its own data; another rater's is the admin key's alone (403 for any
other key). Without a key every caller is `anonymous`, shared by all keyless callers, so `me` is
refused (403): nobody's data is theirs alone; the admin reaches it as `/v1/raters/anonymous/data`.
As for every admin endpoint, with no admin key configured anyone counts as the admin.

No parameters and no body: anything sent is a 400 naming it, never ignored (a deletion above all).

Thin: the store knows which rows are a rater's (`server/store/raters.py`). Plain `def` handlers:
FastAPI runs the store's synchronous reads and writes in its thread pool.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from server.auth import ANONYMOUS, authenticate, require_admin
from server.errors import APIError, bad_request, error_responses
from server.routes.params import only

router = APIRouter(prefix="/v1/raters")
MAX_RATER = 64  # the store's rater columns


def _forbidden(message: str, code: str) -> APIError:
    return APIError(403, message, type="permission_error", code=code)


def _nothing_else(request: Request) -> None:
    """These routes take no parameters and no body: one sent (a `dry_run` a client hoped for) is a 400,
    never ignored — least of all by a deletion."""
    only(request)
    if int(request.headers.get("content-length") or 0) or request.headers.get("transfer-encoding"):
        raise bad_request("This endpoint takes no request body.", None, "extra_forbidden")


def _me(request: Request) -> str:
    _nothing_else(request)
    rater = authenticate(request, request.app.state.settings)
    if rater == ANONYMOUS:
        raise _forbidden(
            "Without an API key you are 'anonymous', like every caller without one: no data is yours alone. "
            "Call with your key (or the admin key, at /v1/raters/anonymous/data).",
            "anonymous_rater",
        )
    return rater


def _any(request: Request, rater: str) -> str:
    """`rater` when the caller is that rater or the admin; 403 for any other key."""
    _nothing_else(request)
    if not 1 <= len(rater) <= MAX_RATER:
        raise bad_request(f"'rater' must be a client id of 1 to {MAX_RATER} characters.", "rater")
    settings = request.app.state.settings
    caller = authenticate(request, settings)
    if caller == rater and rater != ANONYMOUS:
        return rater
    try:
        require_admin(request, settings)
    except APIError:
        raise _forbidden("Only the admin key may read or delete another rater's data.", "not_your_data") from None
    return rater


def _deleted(rater: str, counts: dict[str, int]) -> dict[str, Any]:
    return {"object": "rater.data.deleted", "rater": rater, "deleted": True, "counts": counts}


@router.get("/me/data", responses=error_responses(401, 403, 503), summary="Download everything your key gave")
def my_data(request: Request) -> dict[str, Any]:
    return request.app.state.store.rater_data(_me(request))


@router.delete("/me/data", responses=error_responses(401, 403, 503), summary="Delete everything your key gave")
def delete_my_data(request: Request) -> dict[str, Any]:
    rater = _me(request)
    return _deleted(rater, request.app.state.store.delete_rater_data(rater))


@router.get(
    "/{rater}/data", responses=error_responses(400, 401, 403, 503), summary="Download a rater's data (the admin)"
)
def rater_data(rater: str, request: Request) -> dict[str, Any]:
    return request.app.state.store.rater_data(_any(request, rater))


@router.delete(
    "/{rater}/data", responses=error_responses(400, 401, 403, 503), summary="Delete a rater's data (the admin)"
)
def delete_rater_data(rater: str, request: Request) -> dict[str, Any]:
    rater = _any(request, rater)
    return _deleted(rater, request.app.state.store.delete_rater_data(rater))
