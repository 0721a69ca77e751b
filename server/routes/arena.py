"""The blind arena over HTTP: open a battle, go on for more turns, look at it, vote.

`POST /v1/arena/battles` → `{"id", "a": {"content", "finish_reason"}, "b": {...}, ...}` (no stage);
`POST /v1/arena/battles/{id}/turns` `{"content"}` → both sides' next answers;
`GET /v1/arena/battles/{id}` → the battle as its rater sees it (stages once voted);
`POST /v1/arena/battles/{id}/vote` `{"winner", "reasons"?, "comment"?}` → both stages revealed.

Thin: authentication (the caller's client id is the rater: another key's battle is a 404), the
`BattleConflict` → 409 mapping, and nothing about the stages on any response before the vote.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from server.arena import ArenaService, BattleRequest, TurnRequest, VoteRequest, blind_battle, reveal
from server.auth import authenticate
from server.errors import APIError, error_responses
from server.store.records import BattleConflict

router = APIRouter(prefix="/v1/arena")


def arena(request: Request) -> ArenaService:
    return request.app.state.arena


def _conflict(exc: BattleConflict) -> APIError:
    return APIError(409, exc.message, type="invalid_request_error", param=exc.param, code="battle_conflict")


@router.post("/battles", responses=error_responses(400, 401, 404, 429, 503))
async def open_battle(body: BattleRequest, request: Request) -> dict[str, Any]:
    rater = authenticate(request, request.app.state.settings)
    service = arena(request)
    battle = await service.complete(await service.open(body, rater))
    return blind_battle(battle)


@router.post("/battles/{battle_id}/turns", responses=error_responses(400, 401, 404, 409, 429, 503))
async def next_turn(battle_id: str, body: TurnRequest, request: Request) -> dict[str, Any]:
    rater = authenticate(request, request.app.state.settings)
    service = arena(request)
    try:
        started = await service.turn(battle_id, body, rater)
    except BattleConflict as exc:
        raise _conflict(exc) from None
    return blind_battle(await service.complete(started))


@router.get("/battles/{battle_id}", responses=error_responses(401, 404))
def get_battle(battle_id: str, request: Request) -> dict[str, Any]:
    rater = authenticate(request, request.app.state.settings)
    store = request.app.state.store
    battle = store.get_battle(battle_id, rater=rater)
    vote = store.get_arena_vote(battle_id, rater=rater) if battle.status == "voted" else None
    body = blind_battle(battle)
    if vote is not None:
        body["vote"] = reveal(battle, vote)
    return body


@router.post("/battles/{battle_id}/vote", responses=error_responses(400, 401, 404, 409))
async def vote(battle_id: str, body: VoteRequest, request: Request) -> dict[str, Any]:
    rater = authenticate(request, request.app.state.settings)
    try:
        return await arena(request).vote(battle_id, body, rater)
    except BattleConflict as exc:
        raise _conflict(exc) from None
