"""A request body limit, enforced as the bytes arrive: `BodyLimitMiddleware` (pure ASGI).

A request whose `Content-Length` is over the limit is answered 413 before any of its body is read;
a body sent without a length (chunked) is counted chunk by chunk and refused the moment it passes
the limit, so the server never buffers more than the limit for one request. The 413 carries the
OpenAI error body. This module knows bytes and ASGI messages, nothing about routes or models.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes the limit. An HTTPException, so FastAPI's
    body parsing lets it through (it turns other errors into a 400) and the app renders it."""

    def __init__(self, limit: int):
        super().__init__(413, too_large_message(limit))
        self.limit = limit


def too_large_message(limit: int) -> str:
    return f"The request body is larger than this server's limit of {limit} bytes."


def error_body(limit: int) -> dict:
    return {
        "error": {
            "message": too_large_message(limit),
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit <= 0:
            return await self.app(scope, receive, send)
        length = _content_length(scope)
        if length is not None and length > self.limit:
            return await self._refuse(send)

        received = 0
        exceeded = started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise BodyTooLarge(self.limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # whatever the app made of the exception, the client gets our 413
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:  # answered already: nothing sensible left to send
                return
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        metrics.TOO_LARGE.labels("http").inc()
        body = json.dumps(error_body(self.limit)).encode()
        # `Connection: close`: the unread rest of the body must not be parsed as a next request.
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
