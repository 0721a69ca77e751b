"""OpenAI-compatible endpoints: `/v1/models`, `/v1/chat/completions`, `/v1/completions`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from server.auth import authenticate
from server.errors import APIError
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.responses import DONE, ChunkWriter, chat_body, completion_body, sse_error
from server.serving import Generation, StageService

router = APIRouter(prefix="/v1")


def _service(request: Request) -> StageService:
    return request.app.state.service


@router.get("/models")
async def list_models(request: Request):
    authenticate(request, request.app.state.settings)
    data = [{"id": s["id"], "object": "model", "created": 0, "owned_by": "stagechat", **s}
            for s in _service(request).stages()]
    return {"object": "list", "data": data}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    client = authenticate(request, request.app.state.settings)
    gen = await _service(request).chat(body, client)
    return await _respond(gen, body.stream, body.include_usage, chat_body)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    client = authenticate(request, request.app.state.settings)
    gen = await _service(request).complete(body, client)
    return await _respond(gen, body.stream, body.include_usage, completion_body)


async def _respond(gen: Generation, stream: bool, include_usage: bool, render):
    if not stream:
        async for _ in gen:
            pass
        return JSONResponse(render(gen))
    return StreamingResponse(_sse(gen, include_usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(gen: Generation, include_usage: bool) -> AsyncIterator[str]:
    # Starlette cancels this generator when the client disconnects; closing `gen` aborts the engine request.
    writer = ChunkWriter(gen, include_usage)
    try:
        async for batch in gen:
            yield writer.chunk(batch)
    except APIError as exc:  # headers are gone: report in-band, as OpenAI does
        yield sse_error(exc.body())
    if include_usage:
        yield writer.usage_chunk()
    yield DONE
