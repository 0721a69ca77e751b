"""OpenAI-compatible endpoints: `/v1/models`, `/v1/chat/completions`, `/v1/completions`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from server.auth import authenticate
from server.errors import APIError
from server.internal_errors import internal_error, request_id
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.responses import DONE, ChunkWriter, Rendering, chat_body, completion_body, sse_error
from server.serving import Generation, StageService, drain
from server.tools import ToolCallReader

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")


def _service(request: Request) -> StageService:
    return request.app.state.service


@router.get("/models")
async def list_models(request: Request):
    authenticate(request, request.app.state.settings)
    data = [
        {"id": s["id"], "object": "model", "created": 0, "owned_by": "stagechat", **s}
        for s in _service(request).stages()
    ]
    data += [
        {"object": "model", "created": 0, "owned_by": "stagechat", "kind": "reward_model", **rm}
        for rm in _service(request).rewards.models()
    ]  # extension: `kind` tells them apart
    return {"object": "list", "data": data}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    client = authenticate(request, request.app.state.settings)
    service = _service(request)
    gen = await service.chat(body, client)
    how = Rendering(
        include_usage=body.include_usage,
        continuous_usage=body.continuous_usage,
        prompt_logprobs=body.prompt_logprobs is not None,
        tools=_tool_reader(service, body, gen),
    )
    return await _respond([gen], body.stream, how, lambda gens: chat_body(gens[0], how))


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    client = authenticate(request, request.app.state.settings)
    service = _service(request)
    # Every prompt is checked (and admitted) before any runs: a bad one refuses the whole request.
    gens = [await service.complete(body.single(p), client) for p in body.prompts()]
    how = Rendering(
        include_usage=body.include_usage,
        continuous_usage=body.continuous_usage,
        echo=body.echo,
        prompt_logprobs=body.prompt_logprobs is not None,
    )
    return await _respond(gens, body.stream, how, lambda gens_: completion_body(gens_, how))


def _tool_reader(service: StageService, body: ChatCompletionRequest, gen: Generation):
    """A factory of per-choice tool-call readers, when this request may call tools."""
    if not body.calls_tools():
        return None
    parser = service.pool.registry.stages[body.model].tool_parser
    tokenizer = gen.route.engine.tokenizer
    mode = "named" if body.forced_tool() else ("required" if body.tool_choice == "required" else "auto")
    return lambda: ToolCallReader(
        mode, tokenizer=tokenizer, parser=parser, name=body.forced_tool(), parallel=body.parallel_tool_calls
    )


async def _respond(gens: list[Generation], stream: bool, how: Rendering, render):
    if not stream:
        await drain(*gens)
        return JSONResponse(render(gens))
    return StreamingResponse(
        _sse(gens, how),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _merged(gens: list[Generation]) -> AsyncIterator[tuple[int, list]]:
    """(prompt index, batch) from every generation as they come; closing this closes them all."""
    if len(gens) == 1:
        async for batch in gens[0]:
            yield 0, batch
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(p: int, gen: Generation) -> None:
        try:
            async for batch in gen:
                await queue.put((p, batch, None))
        except Exception as exc:  # handed to the consumer, which reports it in-band
            await queue.put((p, None, exc))
        finally:
            await queue.put((p, None, None))

    tasks = [asyncio.create_task(pump(p, g)) for p, g in enumerate(gens)]
    try:
        running = len(tasks)
        while running:
            p, batch, exc = await queue.get()
            if exc is not None:
                raise exc
            if batch is None:
                running -= 1
                continue
            yield p, batch
    finally:
        for task in tasks:  # a client that went away: cancelling a pump closes (aborts) its generation
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _sse(gens: list[Generation], how: Rendering) -> AsyncIterator[str]:
    # Starlette cancels this generator when the client disconnects; closing the generations aborts
    # their engine requests.
    writer = ChunkWriter(gens, how)
    stream = _merged(gens)
    try:
        async for p, batch in stream:
            if chunk := writer.chunk(batch, p):
                yield chunk
    except APIError as exc:  # headers are gone: report in-band, as OpenAI does (an engine that died: 503)
        yield sse_error(exc.body())
    except Exception as exc:  # never a bare reset: in-band too, with a request id the log line also has
        rid = request_id()
        log.error("request %s: stream of %s failed: %s: %s", rid, gens[0].id, type(exc).__name__, exc, exc_info=exc)
        yield sse_error(internal_error(rid).body())
    finally:
        await stream.aclose()
    if how.include_usage:
        yield writer.usage_chunk()
    yield DONE
