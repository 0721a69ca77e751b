"""The blind arena over the WebSocket (`/v1/ws`): battles stream both sides' tokens as they come.

Frames the client sends (the envelope as for chat: `type`, `id`):
- `{"type":"arena","id":ID,"messages":[...], ...decoding, "stages"?}`: open a battle (the body of
  `POST /v1/arena/battles`);
- `{"type":"arena_turn","id":ID,"battle_id":B,"content":"..."}`: both sides answer one more message;
- `{"type":"arena_vote","id":ID,"battle_id":B,"winner":"a"|"b"|"tie"|"both_bad","reasons"?,"comment"?}`;
- `{"type":"cancel","id":ID}` stops a battle's turn (both sides), as it stops a chat.

The server answers a battle or turn with one `{"type":"battle","id":ID,"battle_id":B}` as soon as the
battle is stored, then `{"type":"delta","id":ID,"side":"a"|"b","text":...}` frames, then exactly one
`{"type":"done","id":ID,"battle_id":B,"finish_reason":{"a":...,"b":...}}` (or `"cancelled"`) or one
`error`; a vote gets `{"type":"ack","id":ID,"arena_vote":{...stages revealed...}}`. Like the HTTP
answers, no frame names a stage, a response id or a usage before the vote.

Knows the socket's `Connection` (server/routes/ws.py: send, error, running tasks) and `ArenaService`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError

from server.arena import BattleRequest, TurnRequest, VoteRequest, arena_for
from server.errors import APIError, bad_request, from_store_error, from_validation_errors
from server.internal_errors import unexpected_error
from server.store.records import StoreError

KINDS = ("arena", "arena_turn", "arena_vote")
_ENVELOPE = ("type", "id", "battle_id")


async def dispatch(conn, fid: str | int | None, kind: str, frame: dict[str, Any]) -> None:
    """Start what an arena frame asks for on the connection `conn`."""
    arena = arena_for(conn.service)
    if arena is None:
        return await conn.error(
            fid,
            APIError(
                503, "This server keeps no store, so it has no arena.", type="service_unavailable", code="no_store"
            ),
        )
    if fid is None:
        return await conn.error(
            None, bad_request(f"An {kind} frame needs an 'id' (string or integer).", param="id", code="missing_id")
        )
    if fid in conn.running:
        return await conn.error(
            fid, bad_request(f"A request with id {fid!r} is still running.", param="id", code="duplicate_id")
        )
    body_type = {"arena": BattleRequest, "arena_turn": TurnRequest, "arena_vote": VoteRequest}[kind]
    battle_id = frame.get("battle_id")
    if kind != "arena" and not isinstance(battle_id, str):
        return await conn.error(fid, bad_request("'battle_id' must name a battle.", param="battle_id"))
    try:
        body = body_type.model_validate({k: v for k, v in frame.items() if k not in _ENVELOPE})
    except ValidationError as exc:
        return await conn.error(fid, from_validation_errors(exc.errors()))
    conn.seen.add(fid)
    if kind == "arena_vote":
        try:
            revealed = await arena.vote(battle_id, body, conn.client_id)
        except StoreError as exc:
            return await conn.error(fid, from_store_error(exc))
        return await conn.send({"type": "ack", "id": fid, "arena_vote": revealed})
    conn.running[fid] = asyncio.create_task(_run(conn, arena, fid, kind, battle_id, body))


async def _run(conn, arena, fid, kind: str, battle_id: str | None, body) -> None:
    started = None
    try:
        if kind == "arena":
            started = await arena.open(body, conn.client_id)
        else:
            started = await arena.turn(battle_id, body, conn.client_id)
        battle, deltas = started
        finish: dict[str, Any] = {}
        async with arena.running(started):
            await conn.send({"type": "battle", "id": fid, "battle_id": battle.id})
            async for delta in deltas:
                if delta.text:
                    await conn.send({"type": "delta", "id": fid, "side": delta.side, "text": delta.text})
                if delta.finish_reason:
                    finish[delta.side] = delta.finish_reason
        conn.running.pop(fid, None)
        await conn.send({"type": "done", "id": fid, "battle_id": battle.id, "finish_reason": finish})
    except asyncio.CancelledError:
        if fid in conn.cancelled:
            conn.cancelled.discard(fid)
            await conn.send(
                {
                    "type": "done",
                    "id": fid,
                    "battle_id": started[0].id if started else None,
                    "finish_reason": "cancelled",
                }
            )
        raise
    except StoreError as exc:
        await conn.error(fid, from_store_error(exc))
    except APIError as exc:
        await conn.error(fid, exc)
    except Exception as exc:  # reported in-band (and logged), as ws.py reports a failed chat
        if conn.closed:  # the socket closed under a send: nobody to tell
            return
        await conn.error(fid, unexpected_error(exc, app=conn.ws.app, what=f"websocket arena {fid}"))
    finally:
        conn.running.pop(fid, None)
