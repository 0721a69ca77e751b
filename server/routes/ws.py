"""The WebSocket front door, `/v1/ws`: several chat generations multiplexed on one socket by `id`.

Frames are JSON text. The client sends:
- `{"type":"chat","id":ID,"model":STAGE,"messages":[...], ...}`: the fields of a chat completion
  (validated by `ChatCompletionRequest`, run through `StageService.chat`, like `POST /v1/chat/completions`);
  opt-in, as the Responses API has them, `"store": true` saves the turn as a conversation and
  `"previous_response_id"` continues a saved one (its branch is put before `messages`), both with the
  owner rules of `server/conversations.py`, saved by its `save_turn` (as `/v1/responses` saves);
- `{"type":"cancel","id":ID}`: abort that generation in the engine;
- `{"type":"feedback","response_id":...,"rating":"up"|"down","comment"?, "id"?}`: stored by `Store.rate`,
  exactly as `POST /v1/feedback` stores it; `{"type":"preference","response_ids":[A,B],"choice":...}`,
  `{"type":"ranking","response_ids":[...],"ranking":[[...],...]}` and
  `{"type":"correction","response_id":...,"completion":...}` likewise (`POST /v1/preferences`,
  `/v1/rankings`, `/v1/corrections`); the `ack` carries the stored object under the frame's type.

The server answers a chat with `delta` frames (`text`, plus `logprobs` in the chat-completion shape
when asked, plus `index` when n > 1) and ends every request with exactly one `done` or one `error`.
A cancelled request's `done` says `"finish_reason":"cancelled"`; a generation whose engine died mid-way
ends with an `error` frame carrying `"finish_reason":"error"`, its `response_id` and `usage`. Feedback
gets one `ack` or `error`.
A saved turn's `done` also carries `conversation_id` and `message_id` (the answer's, the next
`previous_response_id`); a cancelled or failed generation saves nothing.
Anything malformed gets an `error` frame (`id` null when it has none) and the socket stays open; a
closed socket aborts all of its generations. This module renders frames; it knows nothing of
engines or templates beyond what `StageService` and `Generation` expose.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError

from server import metrics
from server.conversations import Caller, answer_message, caller, save_turn
from server.errors import APIError, bad_request, from_store_error, from_validation_errors, not_found, too_large
from server.internal_errors import internal_error, request_id, unexpected_error
from server.limits import RateLimited, TokenBucket
from server.protocol import ChatCompletionRequest, speculative_body
from server.responses import chat_logprobs, reward_body
from server.serving import Generation, StageService
from server.store.records import ConversationMessage, NewMessage, StoreError

log = logging.getLogger(__name__)

router = APIRouter()

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# Fields of the frame envelope, not of the request they carry.
_ENVELOPE = ("type", "id")
# WebSocket close code for a refused credential (RFC 6455 "policy violation").
POLICY_VIOLATION = 1008
# The chat frame's fields that say whether and where its turn is saved (not chat-completion fields).
_SAVING = ("store", "previous_response_id")


@dataclass
class Saving:
    """Where a chat frame's turn goes: nowhere (`store` false), or under the branch `history` ends."""

    store: bool = False
    history: list[ConversationMessage] = field(default_factory=list)


def _frame_param(error: APIError, before: int) -> APIError:
    """A validation error's `param` as the frame has it: `messages.N…` counts the frame's own messages,
    not the saved ones put before them."""
    head, _, rest = (error.param or "").partition(".")
    index, dot, tail = rest.partition(".")
    if before and head == "messages" and index.isdigit() and int(index) >= before:
        error.param = f"messages.{int(index) - before}{dot}{tail}"
    return error


def _frame_id(frame: dict[str, Any]) -> str | int | None:
    value = frame.get("id")
    # bool is an int in Python; an id of `true` is a client bug, not id 1.
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


class _Gone(Exception):
    """The socket closed under a send: stop quietly, the generation's close aborts it."""


class Connection:
    """One socket: its running generations by id, and one writer at a time."""

    def __init__(
        self,
        websocket: WebSocket,
        service: StageService,
        client_id: str,
        *,
        who: Caller | None = None,
        max_frame_bytes: int = 0,
        frames_per_second: float = 0.0,
    ):
        self.ws = websocket
        self.who = who or Caller(client_id, None, None)  # whose conversations a saved turn joins
        # Frame limits (0 = off): a frame over them gets an error frame and is dropped; the socket stays.
        self.max_frame_bytes = max_frame_bytes
        self.frames = TokenBucket(frames_per_second, 2 * frames_per_second)
        self.service = service
        self.client_id = client_id
        self.running: dict[str | int, asyncio.Task] = {}
        self.seen: set[str | int] = set()  # ids used on this socket: a late cancel is not an error
        self.cancelled: set[str | int] = set()
        self.chores: set[asyncio.Task] = set()  # feedback writes in flight
        self.closed = False
        self._send_lock = asyncio.Lock()

    async def send(self, frame: dict[str, Any]) -> None:
        if self.closed:
            return
        async with self._send_lock:  # frames from concurrent generations must not interleave
            try:
                await self.ws.send_text(_dumps(frame))
            except Exception as exc:  # starlette raises WebSocketDisconnect or RuntimeError after a close
                self.closed = True
                raise _Gone() from exc

    async def error(self, id: str | int | None, exc: APIError, gen: Generation | None = None) -> None:
        frame: dict[str, Any] = {"type": "error", "id": id, "error": exc.body()["error"]}
        if gen is not None:  # a generation that had started ends here (its engine died): say how it ended
            frame.update(response_id=gen.id, finish_reason="error", usage=gen.usage())
        await self.send(frame)

    # -- the receive loop ------------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if await self.over_limits(text if text is not None else message.get("bytes") or b""):
                    continue
                if text is None:
                    await self.error(None, bad_request("Frames must be JSON text, not binary.", code="invalid_frame"))
                    continue
                await self.dispatch(text)
        finally:
            await self.close()

    def _too_big(self, data: str | bytes) -> int | None:
        if not self.max_frame_bytes:
            return None
        size = len(data) if isinstance(data, bytes) or len(data) * 4 <= self.max_frame_bytes else len(data.encode())
        return size if size > self.max_frame_bytes else None

    async def over_limits(self, data: str | bytes) -> bool:
        """True (and an error frame is on its way) when this frame breaks the size or rate limit."""
        size = self._too_big(data)
        if size is not None:
            metrics.TOO_LARGE.labels("websocket").inc()
            await self.error(
                None,
                too_large(
                    f"The frame has {size} bytes; this server's limit is {self.max_frame_bytes}.",
                    code="frame_too_large",
                ),
            )
            return True
        if not self.frames.take():
            metrics.RATE_LIMITED.labels("ws_frames_per_second").inc()
            await self.error(
                None,
                RateLimited(
                    f"More than {self.frames.rate:g} frames per second on this socket; this frame was dropped.",
                    self.frames.retry_after(),
                    limit="ws_frames_per_second",
                ),
            )
            return True
        return False

    async def dispatch(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            return await self.error(None, bad_request("The frame is not valid JSON.", code="invalid_json"))
        if not isinstance(frame, dict):
            return await self.error(None, bad_request("A frame must be a JSON object.", code="invalid_frame"))
        kind, fid = frame.get("type"), _frame_id(frame)
        if "id" in frame and frame["id"] is not None and fid is None:
            return await self.error(
                None, bad_request("'id' must be a string or an integer.", param="id", code="invalid_id")
            )
        if kind == "chat":
            await self.start_chat(fid, frame)
        elif kind == "cancel":
            await self.cancel(fid)
        elif kind in ("arena", "arena_turn", "arena_vote"):  # the blind arena: server/routes/arena_ws.py
            from server.routes import arena_ws

            await arena_ws.dispatch(self, fid, kind, frame)
        elif kind in ("feedback", "preference", "ranking", "correction"):
            task = asyncio.create_task(self.feedback(fid, kind, frame))
            self.chores.add(task)
            task.add_done_callback(self.chores.discard)
        else:
            await self.error(
                fid,
                bad_request(
                    f"Unknown frame type {kind!r}; expected chat, cancel, feedback, preference, ranking or correction.",
                    param="type",
                    code="unknown_type",
                ),
            )

    # -- chat ------------------------------------------------------------------------------------

    async def start_chat(self, fid: str | int | None, frame: dict[str, Any]) -> None:
        if fid is None:
            return await self.error(
                None, bad_request("A chat frame needs an 'id' (string or integer).", param="id", code="missing_id")
            )
        if fid in self.running:
            return await self.error(
                fid, bad_request(f"A generation with id {fid!r} is still running.", param="id", code="duplicate_id")
            )
        fields = {k: v for k, v in frame.items() if k not in _ENVELOPE and k not in _SAVING}
        try:
            saving = await self.saving(frame)
        except APIError as exc:
            return await self.error(fid, exc)
        if saving.history and isinstance(fields.get("messages"), list):
            fields["messages"] = [{"role": m.role, "content": m.content} for m in saving.history] + fields["messages"]
        try:
            request = ChatCompletionRequest.model_validate(fields)
        except ValidationError as exc:
            return await self.error(fid, _frame_param(from_validation_errors(exc.errors()), len(saving.history)))
        if saving.store and request.n > 1:
            return await self.error(
                fid, bad_request("A saved turn keeps one answer: send n 1 with store.", param="n", code="invalid_n")
            )
        # What this socket's frames cannot carry is refused, never dropped (use the HTTP API for them).
        unsupported = next((f for f in ("tools", "prompt_logprobs") if getattr(request, f)), None)
        if unsupported:
            return await self.error(
                fid,
                bad_request(
                    f"'{unsupported}' is not supported over the WebSocket; use POST /v1/chat/completions.",
                    param=unsupported,
                ),
            )
        self.seen.add(fid)
        # A task per generation, so one slow stream (or a starting engine) never blocks the others.
        self.running[fid] = asyncio.create_task(self.run_chat(fid, request, saving))

    async def saving(self, frame: dict[str, Any]) -> Saving:
        """Whether and where the chat frame's turn is saved, as the Responses API decides it: `store`
        (here off unless asked, or unless continuing a saved conversation) and `previous_response_id`
        (any saved message the caller may see; a branch through a deleted one is refused)."""
        store = self.service.store
        wants, previous = frame.get("store"), frame.get("previous_response_id")
        if wants is not None and not isinstance(wants, bool):
            raise bad_request(f"'store' must be true or false; got {wants!r}.", param="store", code="invalid_store")
        if previous is not None and (not isinstance(previous, str) or not previous):
            raise bad_request(
                f"'previous_response_id' must be a message id (a non-empty string); got {previous!r}.",
                param="previous_response_id",
            )
        if wants and store is None:
            raise APIError(503, "This server keeps no conversations.", param="store", type="service_unavailable")
        if wants and not self.service.log_prompts:
            raise bad_request(
                "This server does not keep prompts or answers (prompt logging is off): send store false.", param="store"
            )
        saving = Saving(store=wants if wants is not None else previous is not None and self.service.log_prompts)
        if previous is not None:
            if store is None:
                raise not_found("This server stores no conversations.", param="previous_response_id")
            try:
                saving.history = await asyncio.to_thread(
                    store.message_path, previous, viewer=self.who.viewer, param="previous_response_id"
                )
            except StoreError as exc:
                raise from_store_error(exc) from None
        return saving

    async def save(self, request: ChatCompletionRequest, saving: Saving, gen: Generation) -> dict[str, Any]:
        """Write the turn (the frame's own messages, then the answer) under its branch, as `/v1/responses`
        does; the ids go into the done frame."""
        new = [NewMessage(m.role, m.text()) for m in request.messages[len(saving.history) :]]
        new.append(answer_message(gen))
        conversation_id, written = await asyncio.to_thread(save_turn, self.service.store, self.who, saving.history, new)
        return {"conversation_id": conversation_id, "message_id": written[-1].id}

    async def run_chat(self, fid: str | int, request: ChatCompletionRequest, saving: Saving | None = None) -> None:
        gen: Generation | None = None
        try:
            gen = await self.service.chat(request, self.client_id)
            indexed = gen.settings.n > 1
            async for batch in gen:
                for delta in batch:
                    if not delta.text and not delta.logprobs:
                        continue  # a bare finish: the done frame says it
                    out: dict[str, Any] = {"type": "delta", "id": fid, "text": delta.text}
                    if indexed:
                        out["index"] = delta.index
                    if gen.settings.logprobs is not None:
                        out["logprobs"] = chat_logprobs(delta.logprobs or [])
                    await self.send(out)
            self.running.pop(fid, None)  # finished: a cancel from now on is too late, not an error
            done = done_frame(fid, gen)
            if saving is not None and saving.store:
                try:
                    done.update(await self.save(request, saving, gen))
                except StoreError as exc:  # say, the previous message was deleted while this one was generated
                    error = bad_request(f"The answer could not be stored: {exc.message}", param=exc.param)
                    await self.send({**done, "type": "error", "error": error.body()["error"]})
                    return
            await self.send(done)
        except asyncio.CancelledError:
            # Leaving the `async for` closed the generation, which aborted it in the engine.
            if fid in self.cancelled:
                self.cancelled.discard(fid)
                await self.send(done_frame(fid, gen, cancelled=True))
            raise
        except _Gone:
            pass
        except APIError as exc:
            await self.error(fid, exc, gen)
        except Exception as exc:
            rid = request_id()
            log.error(
                "request %s: websocket generation %s failed: %s: %s", rid, fid, type(exc).__name__, exc, exc_info=exc
            )
            await self.error(fid, internal_error(rid), gen)
        finally:
            self.running.pop(fid, None)

    async def cancel(self, fid: str | int | None) -> None:
        if fid is None:
            return await self.error(
                None, bad_request("A cancel frame needs the 'id' of a chat.", param="id", code="missing_id")
            )
        task = self.running.get(fid)
        if task is None:
            if fid not in self.seen:
                await self.error(
                    fid, not_found(f"No generation with id {fid!r} on this socket.", param="id", code="unknown_id")
                )
            return  # already finished: its done frame went (or is going) out
        self.cancelled.add(fid)
        task.cancel()

    # -- feedback --------------------------------------------------------------------------------

    async def feedback(self, fid: str | int | None, kind: str, frame: dict[str, Any]) -> None:
        store = self.service.store
        if store is None:
            return await self.error(
                fid, APIError(503, "This server keeps no feedback store.", type="service_unavailable", code="no_store")
            )
        # The HTTP routes' body types and their one write, so both doors validate, store and answer alike.
        from server.routes.feedback import JUDGEMENT_BODIES, write_judgement

        try:
            body = JUDGEMENT_BODIES[kind].model_validate({k: v for k, v in frame.items() if k not in _ENVELOPE})
        except ValidationError as exc:
            return await self.error(fid, from_validation_errors(exc.errors()))
        try:
            obj = await asyncio.to_thread(write_judgement, store, kind, body, self.client_id)
        except StoreError as exc:
            return await self.error(fid, from_store_error(exc))
        except Exception as exc:  # an error frame, never a task that dies silently: nothing was stored
            return await self.error(fid, unexpected_error(exc, app=self.ws.app, what=f"websocket {kind} {fid}"))
        try:
            await self.send({"type": "ack", "id": fid, kind: obj})
        except _Gone:
            pass  # stored all the same: the rating outlives the socket

    # -- closing ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """The socket is gone: abort every generation (nobody will read it); let ratings finish."""
        self.closed = True
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self.chores, return_exceptions=True)


def done_frame(fid: str | int, gen: Generation | None, *, cancelled: bool = False) -> dict[str, Any]:
    if gen is None:  # cancelled before the service had started it
        return {
            "type": "done",
            "id": fid,
            "response_id": None,
            "finish_reason": "cancelled",
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "speculative": None,
        }
    frame: dict[str, Any] = {
        "type": "done",
        "id": fid,
        "response_id": gen.id,
        "model": gen.stage,
        "finish_reason": "cancelled" if cancelled else gen.choices[0].finish_reason,
        "usage": gen.usage(),
        "speculative": speculative_body(gen.speculative),
        "timings": {"ttft_ms": gen.ttft_ms, "duration_ms": gen.duration_ms},
    }
    if gen.reward_model is not None:  # extension: the reward model's score of the (first) answer
        frame["reward"] = reward_body(gen.choices[0])
    if gen.choices[0].marks is not None:  # extension: speculation token by token (server.spec_marks)
        frame["speculative_marks"] = gen.choices[0].marks.body()
    if gen.settings.n > 1:
        frame["choices"] = [
            {
                "index": c.index,
                "finish_reason": "cancelled" if cancelled else c.finish_reason,
                **({"reward": reward_body(c)} if gen.reward_model is not None else {}),
            }
            for c in gen.choices
        ]
    return frame


@router.websocket("/v1/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    app = websocket.app
    await websocket.accept()
    try:
        who = caller(websocket, app.state.settings)  # the client id, and its conversations' owner and scope
    except APIError as exc:
        # Accept first, so a browser (which cannot read a refused handshake) sees why.
        await websocket.send_text(_dumps({"type": "error", "id": None, "error": exc.body()["error"]}))
        await websocket.close(code=POLICY_VIOLATION, reason=exc.message[:120])
        return
    settings = app.state.settings
    await Connection(
        websocket,
        app.state.service,
        who.client_id,
        who=who,
        max_frame_bytes=settings.ws_max_frame_bytes,
        frames_per_second=settings.ws_frames_per_second,
    ).serve()
