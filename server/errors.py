"""OpenAI-style errors: one exception type, one body shape, the right status.

Raise `APIError` (or a helper below) anywhere in request handling; the app's exception handler turns
it into `{"error": {"message", "type", "param", "code"}}`. The WebSocket sends the same body. A
`StoreError` (the store refusing a rating) reads as one through `from_store_error`; the app's handler
for it does that, so routes let it rise.
"""

from __future__ import annotations

from typing import Any

from server.store.records import BattleConflict, StoreError


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.headers = headers  # e.g. Retry-After on a 429
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = None, code: str = "not_found") -> APIError:
    return APIError(404, message, type="not_found_error", param=param, code=code)


def unauthorized(message: str = "Invalid or missing API key.") -> APIError:
    return APIError(401, message, type="authentication_error", code="invalid_api_key")


def not_ready(message: str = "The server is still warming up its engines.") -> APIError:
    return APIError(503, message, type="service_unavailable", code="not_ready")


def too_large(message: str, param: str | None = None, code: str = "request_too_large") -> APIError:
    return APIError(413, message, param=param, code=code)


def from_store_error(error: StoreError) -> APIError:
    """A refusal of the store as the API answers it: an unknown id is a 404, a battle not in the state
    the action needs (voted, still generating) a 409, the rest 400."""
    if isinstance(error, LookupError):  # unknown responses, items, conversations, battles
        return not_found(error.message, param=error.param)
    if isinstance(error, BattleConflict):
        return APIError(409, error.message, param=error.param, code="battle_conflict")
    return bad_request(error.message, param=error.param)


def from_validation_errors(errors: list[dict[str, Any]]) -> APIError:
    """Pydantic/FastAPI validation errors as one 400: the first problem, with a dotted `param`."""
    err = errors[0]
    if err.get("type") == "json_invalid":
        return bad_request("The request body is not valid JSON.", code="json_invalid")
    param = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or None
    message = f"{param}: {err.get('msg')}" if param else str(err.get("msg"))
    if err.get("type") == "extra_forbidden":  # a field this server does not honour: never ignored silently
        message = f"Unsupported parameter '{param}': this server does not honour it."
    return bad_request(message, param=param, code=err.get("type"))


# -- the contract: how errors appear in the OpenAPI spec ------------------------------------------

ERROR_SCHEMA_NAME = "ErrorResponse"
ERROR_SCHEMA: dict[str, Any] = {
    "title": ERROR_SCHEMA_NAME,
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_WHY = {
    400: "Bad parameter or malformed body",
    401: "Missing or invalid API key (or admin key)",
    404: "Unknown stage, response or resource",
    405: "Method not allowed on this path",
    409: "Conflicts with the current state",
    413: "Request body (or prompt) too large",
    429: "Over a rate limit (see Retry-After)",
    500: "Server error",
    503: "Not ready (engines warming up) or unavailable",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for these error statuses, each with the OpenAI error body."""
    ref = {"$ref": f"#/components/schemas/{ERROR_SCHEMA_NAME}"}
    return {
        status: {"description": _WHY.get(status, "Error"), "content": {"application/json": {"schema": ref}}}
        for status in statuses
    }
