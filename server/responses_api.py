"""The OpenAI Responses API served: a turn is a chat generation of the one `StageService`, and a stored
response is a node of a saved conversation (`server/store/conversations.py`).

What it knows: how a turn's chat messages are made (the `instructions` first — they are not carried over
from earlier turns, as the spec says — then the branch ending at `previous_response_id`, then this turn's
`input`); what a response object, its output message and its stream events look like (`response.created`
… `response.completed`, each with a `sequence_number`); that a stored turn writes its input messages and
its answer (id `resp_…`) as a chain under the previous response, in one transaction, before the final
event, so retrieving it right after always works; the owner rules (`server/conversations.py`); and that
with prompt logging off nothing is stored unless the caller explicitly asks (which is then a 400).

What it does not know: HTTP routing (`server/routes/responses.py`), SQL, or engines.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from server.conversations import Caller, answer_message, save_turn
from server.errors import APIError, bad_request, from_validation_errors, not_found
from server.protocol import ChatCompletionRequest, speculative_body
from server.protocol_responses import CHAT_TO_RESPONSES_PARAM, ResponsesRequest
from server.responses import reward_body
from server.serving import Generation, StageService, drain
from server.store.conversations import new_id
from server.store.records import ConversationMessage, NewMessage, StoreError

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass
class Turn:
    """One `POST /v1/responses` in flight."""

    id: str
    request: ResponsesRequest
    caller: Caller
    gen: Generation
    history: list[ConversationMessage]  # the branch ending at previous_response_id
    store: bool  # whether this turn is saved
    created_at: int = field(default_factory=lambda: int(time.time()))
    error: dict[str, Any] | None = None

    @property
    def item_id(self) -> str:
        return "msg_" + self.id.removeprefix("resp_")


def _renamed(exc: APIError) -> APIError:
    """A chat-path error with the Responses API's name for the field it blames."""
    head, dot, rest = (exc.param or "").partition(".")
    if head in CHAT_TO_RESPONSES_PARAM:  # "messages.2.content" is about the input (or the stored branch)
        exc.param = CHAT_TO_RESPONSES_PARAM[head] + (dot + rest if head != "messages" else "")
    if exc.param == "max_output_tokens":
        exc.message = exc.message.replace("max_tokens", "max_output_tokens")
    return exc


async def start(service: StageService, request: ResponsesRequest, who: Caller) -> Turn:
    """Check the request, read the branch it continues, and start its generation (errors: 4xx, nothing run)."""
    store = service.store
    wants_store = request.store is not False
    if not service.log_prompts and wants_store:
        if request.store is True and "store" in request.model_fields_set:
            raise bad_request(
                "This server does not keep prompts or answers (prompt logging is off): send store false.", param="store"
            )
        wants_store = False  # the default yields to the operator's choice
    history: list[ConversationMessage] = []
    if request.previous_response_id is not None:
        if store is None:
            raise not_found("This server stores no responses.", param="previous_response_id")
        history = await asyncio.to_thread(
            store.message_path, request.previous_response_id, viewer=who.viewer, param="previous_response_id"
        )
    messages = [{"role": "system", "content": request.instructions}] if request.instructions else []
    messages += [{"role": m.role, "content": m.content} for m in history]
    messages += request.input_messages()
    try:
        chat = ChatCompletionRequest.model_validate({"messages": messages, **request.chat_fields()})
    except ValidationError as exc:
        raise _renamed(from_validation_errors(exc.errors())) from None
    try:
        gen = await service.chat(chat, who.client_id)
    except APIError as exc:
        raise _renamed(exc) from None
    return Turn(
        id=new_id("resp"),
        request=request,
        caller=who,
        gen=gen,
        history=history,
        store=wants_store and store is not None,
    )


# -- what a response looks like ---------------------------------------------------------------------------


def _status(turn: Turn) -> str:
    if turn.error is not None:
        return "failed"
    choice = turn.gen.choices[0]
    if choice.finish_reason is None:
        return "in_progress"
    return "incomplete" if choice.finish_reason == "length" else "completed"


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def output_message(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [output_text(text)]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def response_object(turn: Turn, *, with_output: bool = True) -> dict[str, Any]:
    """The response as it stands (in progress, or final once the generation has finished)."""
    gen, request, status = turn.gen, turn.request, _status(turn)
    choice = gen.choices[0]
    finished = status in ("completed", "incomplete")
    body: dict[str, Any] = {
        "id": turn.id,
        "object": "response",
        "created_at": turn.created_at,
        "status": status,
        "error": turn.error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": gen.stage,
        "output": [],
        "parallel_tool_calls": False,
        "previous_response_id": request.previous_response_id,
        "reasoning": None,
        "store": turn.store,
        "temperature": gen.settings.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "none",
        "tools": [],
        "top_p": gen.settings.top_p,
        "truncation": "disabled",
        "user": request.user,
        "metadata": request.metadata or {},
        "usage": None,
        "generation_id": gen.id,  # extension: the generation log's id, which /v1/feedback rates
    }
    if finished:
        body["usage"] = {
            "input_tokens": gen.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": gen.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        }
        if (spec := speculative_body(gen.speculative)) is not None:
            body["speculative"] = spec  # extension, as chat has it
        if choice.reward is not None:
            body["reward"] = reward_body(choice)  # extension, as chat has it
    if with_output and (finished or choice.text):
        item_status = "completed" if status == "completed" else ("incomplete" if finished else "in_progress")
        body["output"] = [output_message(turn.item_id, choice.text, item_status)]
    return body


def stored_response(node: ConversationMessage) -> dict[str, Any]:
    """A stored response as `GET /v1/responses/{id}` answers it."""
    meta = (node.meta or {}).get("response")
    if node.role != "assistant" or meta is None:
        raise not_found(
            f"No response {node.id!r}: that id is a conversation message, not a response.", param="response_id"
        )
    body = dict(meta)
    item_status = "completed" if body.get("status") == "completed" else "incomplete"
    body["output"] = [
        output_message(body.pop("item_id", "msg_" + node.id.removeprefix("resp_")), node.content, item_status)
    ]
    return body


def input_items(path: list[ConversationMessage]) -> list[dict[str, Any]]:
    """The input items of the response ending `path`: the messages its turn added, after the previous
    response (or from the root), oldest first."""
    previous = ((path[-1].meta or {}).get("response") or {}).get("previous_response_id")
    start = next((i + 1 for i in range(len(path) - 2, -1, -1) if path[i].id == previous), 0)
    kind = {"assistant": "output_text"}
    return [
        {
            "type": "message",
            "id": m.id,
            "role": m.role,
            "status": "completed",
            "content": [{"type": kind.get(m.role, "input_text"), "text": m.content}],
        }
        for m in path[start:-1]
    ]


# -- saving a turn ------------------------------------------------------------------------------------------


async def save(service: StageService, turn: Turn) -> None:
    """Write the turn's input and answer under the branch it continued (one transaction)."""
    if not turn.store:
        return
    inputs = [NewMessage(m["role"], m["content"]) for m in turn.request.input_messages()]
    meta = response_object(turn, with_output=False)
    meta.pop("output")
    meta["item_id"] = turn.item_id
    answer = answer_message(turn.gen, id=turn.id, meta={"response": meta})  # as the WebSocket saves its answers
    await asyncio.to_thread(save_turn, service.store, turn.caller, turn.history, inputs + [answer])


async def run(service: StageService, turn: Turn) -> dict[str, Any]:
    """The whole turn, not streamed: generate, save, answer."""
    await drain(turn.gen)
    await _save_or_raise(service, turn)
    return response_object(turn)


async def _save_or_raise(service: StageService, turn: Turn) -> None:
    try:
        await save(service, turn)
    except StoreError as exc:  # say, the previous response was deleted while this one was generated
        raise bad_request(f"The response could not be stored: {exc.message}", param=exc.param) from None


# -- streaming ------------------------------------------------------------------------------------------------


def _event(kind: str, seq: int, **fields) -> str:
    return f"event: {kind}\ndata: {_dumps({'type': kind, 'sequence_number': seq, **fields})}\n\n"


async def events(service: StageService, turn: Turn) -> AsyncIterator[str]:
    """The spec's server-sent events for one turn. Closing this (a client that left) aborts the generation."""
    seq = 0

    def event(kind: str, **fields) -> str:
        nonlocal seq
        seq += 1
        return _event(kind, seq - 1, **fields)

    item, where = turn.item_id, {"output_index": 0}
    yield event("response.created", response=response_object(turn))
    yield event("response.in_progress", response=response_object(turn))
    yield event("response.output_item.added", item=output_message(item, None, "in_progress"), **where)
    yield event("response.content_part.added", item_id=item, content_index=0, part=output_text(""), **where)
    stream = turn.gen.__aiter__()
    try:
        async for batch in stream:
            text = "".join(d.text for d in batch if d.index == 0)
            if text:
                yield event(
                    "response.output_text.delta", item_id=item, content_index=0, delta=text, logprobs=[], **where
                )
        await _save_or_raise(service, turn)
    except APIError as exc:  # headers are gone: report in-band, as the spec does
        turn.error = {"code": exc.code or exc.type, "message": exc.message}
        yield event("error", code=exc.code, message=exc.message, param=exc.param)
        yield event("response.failed", response=response_object(turn))
        return
    finally:
        await stream.aclose()
    text = turn.gen.choices[0].text
    final = response_object(turn)
    yield event("response.output_text.done", item_id=item, content_index=0, text=text, logprobs=[], **where)
    yield event("response.content_part.done", item_id=item, content_index=0, part=output_text(text), **where)
    yield event("response.output_item.done", item=final["output"][0], **where)
    # Always `response.completed`, its response saying "incomplete" when max_output_tokens cut it short: what
    # vLLM sends, and what the official client's `get_final_response()` waits for (it fails on
    # `response.incomplete`).
    yield event("response.completed", response=final)
