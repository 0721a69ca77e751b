"""What the HTTP API promises, made true for every route: the OpenAPI spec and 405s.

- `openapi_schema(app)`: FastAPI's spec, corrected to what the server really answers. Validation
  errors are 400s with the OpenAI error body, not FastAPI's 422; every operation documents the
  errors any route can give (400 for bad parameters where it takes any, 401 under `/v1` where keys
  apply, 404 for what a `/v1` request names, 413 where it takes a body, 401/404/429/503 where the
  body names a `model`, 500) and `text/event-stream` where the body has `stream`, plus what the route
  declares itself via `responses=` (`server.errors.error_responses`). Routes added later get the
  same without doing anything. OpenAPI links (`LINKS`) say which response's `id` another operation
  takes — an answer's id is what one rates, a rating's id what one deletes — so a stateful client
  (schemathesis's stateful phase) can follow them.
- `MethodNotAllowedMiddleware`: a known path with a method it does not serve gets 405 with an
  `Allow` header and the OpenAI error body. Without it the UI mounted at `/` swallows such
  requests and answers 404.

It knows routes and the spec; nothing about what the routes do.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import ERROR_SCHEMA, ERROR_SCHEMA_NAME, error_responses

# A generation's response body: OpenAI's, plus the extensions this server adds (marked x-stagechat).
GENERATION_BODY: dict[str, Any] = {
    "type": "object",
    "description": "The OpenAI response body; fields marked x-stagechat are this server's extensions.",
    "properties": {
        "id": {"type": "string"},
        "model": {"type": "string", "description": "The stage that answered."},
        "speculative": {
            "x-stagechat": True,
            "description": "What speculative decoding did for this answer (absent when it did not run).",
            "type": "object",
            "properties": {
                "method": {"type": "string"},
                "draft_tokens": {"type": "integer"},
                "accepted_tokens": {"type": "integer"},
                "acceptance_rate": {"type": "number"},
                "mean_acceptance_length": {"type": "number"},
            },
        },
    },
}
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# (source path, method) -> [(link name, target path, method, parameters, requestBody)]: what a 200
# answer's `id` is the input of. Link bodies are merged into a body generated from the target's schema.
_ANSWER_ID = "$response.body#/id"
_FEEDBACK_LINKS = [
    ("RateTheAnswer", "/v1/feedback", "post", None, {"response_id": _ANSWER_ID, "rating": "up"}),
    ("CorrectTheAnswer", "/v1/corrections", "post", None, {"response_id": _ANSWER_ID}),
]
LINKS: dict[tuple[str, str], list[tuple[str, str, str, dict[str, str] | None, dict[str, Any] | None]]] = {
    ("/v1/chat/completions", "post"): _FEEDBACK_LINKS,
    ("/v1/completions", "post"): _FEEDBACK_LINKS,
    **{
        (f"/v1/{kind}", "post"): [
            (f"Delete{name}", f"/v1/{kind}/{{item_id}}", "delete", {"path.item_id": _ANSWER_ID}, None)
        ]
        for kind, name in [
            ("feedback", "Rating"),
            ("preferences", "Preference"),
            ("rankings", "Ranking"),
            ("corrections", "Correction"),
        ]
    },
}


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR_SCHEMA_NAME] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shapes: never sent
        schemas.pop(name, None)
    for path, item in spec.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            body = _body_schema(op, schemas)
            statuses = [500]
            if op.get("parameters") or op.get("requestBody"):
                statuses.append(400)
            if op.get("requestBody"):
                statuses.append(413)
            if path.startswith("/v1/"):
                statuses.append(401)
                if op.get("parameters") or op.get("requestBody"):
                    statuses.append(404)  # an unknown stage, response id or resource named in the request
            if "model" in body.get("properties", {}):
                # names a stage: unknown (404), keys (401), admission limits (429), engines warming up (503)
                statuses += [401, 404, 429, 503]
            for status, entry in error_responses(*statuses).items():
                responses.setdefault(str(status), entry)  # a route's own entry wins
            if "stream" in body.get("properties", {}) and "model" in body.get("properties", {}) and "200" in responses:
                json_body = responses["200"].setdefault("content", {}).setdefault("application/json", {})
                if not json_body.get("schema"):  # the OpenAI body, with this server's extension fields
                    json_body["schema"] = GENERATION_BODY
            if "stream" in body.get("properties", {}) and "200" in responses:
                # `"stream": true` answers with server-sent events
                content = responses["200"].setdefault("content", {})
                content.setdefault(
                    "text/event-stream",
                    {"schema": {"type": "string", "description": "`data: {chunk}` events, then `data: [DONE]`"}},
                )
    _add_links(spec)
    app.openapi_schema = spec
    return spec


def _add_links(spec: dict[str, Any]) -> None:
    """`LINKS` on the 200 answers of operations both ends of which this app serves."""
    paths = spec.get("paths", {})
    for (path, method), links in LINKS.items():
        ok = paths.get(path, {}).get(method, {}).get("responses", {}).get("200")
        if ok is None:
            continue
        for name, target_path, target_method, parameters, body in links:
            target = paths.get(target_path, {}).get(target_method)
            if target is None or "operationId" not in target:
                continue  # e.g. the feedback routes are off (no store)
            link: dict[str, Any] = {"operationId": target["operationId"]}
            if parameters:
                link["parameters"] = parameters
            if body:
                link["requestBody"] = body
            ok.setdefault("links", {})[name] = link


def _body_schema(op: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    ref = schema.get("$ref", "")
    return schemas.get(ref.rsplit("/", 1)[-1], {}) if ref else schema


class MethodNotAllowedMiddleware:
    """405 for a path some route serves with other methods, before a catch-all mount sees it."""

    def __init__(self, app: ASGIApp, routes_of: Any):
        self.app = app
        self.routes_of = routes_of  # () -> the app's routes, read per request: routers may be added later
        self._static: tuple[tuple, dict[str, frozenset[str] | None]] = ((), {})  # (routes, see `_static_paths`)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            allowed = self._allowed(scope)
            if allowed is not None:
                return await _send_405(send, scope["method"], allowed)
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> list[str] | None:
        """None when some route takes this request (or none knows the path); else the methods it allows."""
        routes = self.routes_of()
        # Most requests name a path without parameters and a method it serves: a dict look-up says
        # so (it is the FULL match the loop below would find), instead of matching every route's
        # regex (7.6 µs for POST /v1/chat/completions; 0.3 µs this way).
        if not scope.get("root_path"):
            known = self._static_paths(routes)
            if scope["path"] in known:
                methods = known[scope["path"]]
                if methods is None or scope["method"] in methods:
                    return None
        static: set[str] = set()  # methods of routes whose path is exactly this one
        templated: set[str] = set()  # methods of routes whose path template matches it ({id} routes)
        for route in routes:
            if not isinstance(route, Route):  # Mount and WebSocketRoute are not Routes
                continue
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return None
            if match is Match.PARTIAL and route.methods:
                (templated if "{" in route.path_format else static).update(route.methods)
        allowed = static or templated  # /v1/feedback/export allows what it serves, not /v1/feedback/{id}'s
        return sorted(allowed) if allowed else None

    def _static_paths(self, routes) -> dict[str, frozenset[str] | None]:
        """The paths of routes without path parameters and the methods they serve (None: any), made
        again whenever the routes change (compared by identity, at C speed)."""
        snapshot = tuple(routes)
        if snapshot != self._static[0]:
            known: dict[str, frozenset[str] | None] = {}
            for route in snapshot:
                if not isinstance(route, Route) or route.param_convertors:
                    continue
                methods = None if route.methods is None else frozenset(route.methods)
                if route.path_format in known:
                    seen = known[route.path_format]
                    methods = None if seen is None or methods is None else seen | methods
                known[route.path_format] = methods
            self._static = (snapshot, known)
        return self._static[1]


async def _send_405(send: Send, method: str, allowed: list[str]) -> None:
    body = json.dumps(
        {
            "error": {
                "message": f"Method {method} is not allowed here; allowed: {', '.join(allowed)}.",
                "type": "invalid_request_error",
                "param": None,
                "code": "method_not_allowed",
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 405,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"allow", ", ".join(allowed).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
