"""The OpenAI Responses API's routes: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`, and
`GET /v1/responses/{id}/input_items`.

Thin: authentication and the owner scope (`server/conversations.py`), then `server/responses_api.py`,
which generates through the one `StageService` and stores through the store. A response that is not the
caller's reads as unknown (404), as does one never stored or deleted.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from server import responses_api
from server.conversations import caller
from server.errors import error_responses, not_found
from server.protocol_responses import ResponsesRequest

router = APIRouter(prefix="/v1", tags=["responses"])


def _store(request: Request):
    store = request.app.state.store
    if store is None:
        raise not_found("This server stores no responses.", param="response_id")
    return store


@router.post(
    "/responses",
    summary="Create a response (OpenAI Responses API)",
    responses=error_responses(400, 401, 404, 413, 429, 503),
)
async def create_response(body: ResponsesRequest, request: Request):
    who = caller(request, request.app.state.settings)
    service = request.app.state.service
    turn = await responses_api.start(service, body, who)
    if not body.stream:  # false or null
        return JSONResponse(await responses_api.run(service, turn))
    return StreamingResponse(
        responses_api.events(service, turn),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/responses/{response_id}", summary="Retrieve a stored response", responses=error_responses(401, 404))
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    who = caller(request, request.app.state.settings)
    node = await asyncio.to_thread(_store(request).get_message, response_id, viewer=who.viewer, param="response_id")
    if node.deleted:
        raise not_found(f"Response {response_id!r} was deleted.", param="response_id")
    return responses_api.stored_response(node)


@router.delete("/responses/{response_id}", summary="Delete a stored response", responses=error_responses(401, 404))
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    who = caller(request, request.app.state.settings)
    store = _store(request)
    node = await asyncio.to_thread(store.get_message, response_id, viewer=who.viewer, param="response_id")
    if node.deleted:
        raise not_found(f"Response {response_id!r} was deleted.", param="response_id")
    responses_api.stored_response(node)  # a response, not some other message: else 404
    await asyncio.to_thread(store.delete_message, response_id, viewer=who.viewer, param="response_id")
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get(
    "/responses/{response_id}/input_items",
    summary="A stored response's input items",
    responses=error_responses(400, 401, 404),
)
async def list_input_items(
    response_id: str,
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> dict[str, Any]:
    who = caller(request, request.app.state.settings)
    path = await asyncio.to_thread(_store(request).message_path, response_id, viewer=who.viewer, param="response_id")
    responses_api.stored_response(path[-1])  # a response, not some other message: else 404
    items = responses_api.input_items(path)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [i["id"] for i in items]
        if after not in ids:
            raise not_found(f"No input item {after!r} in response {response_id!r}.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "has_more": len(items) > limit,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
