"""OpenAI-style errors: one exception type, one body shape, the right status.

Raise `APIError` (or a helper below) anywhere in request handling; the app's exception handler turns
it into `{"error": {"message", "type", "param", "code"}}`. The WebSocket sends the same body.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
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


def from_validation_errors(errors: list[dict[str, Any]]) -> APIError:
    """Pydantic/FastAPI validation errors as one 400: the first problem, with a dotted `param`."""
    err = errors[0]
    if err.get("type") == "json_invalid":
        return bad_request("The request body is not valid JSON.", code="json_invalid")
    param = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or None
    message = f"{param}: {err.get('msg')}" if param else str(err.get("msg"))
    return bad_request(message, param=param, code=err.get("type"))
