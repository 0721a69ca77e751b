"""The blind arena over HTTP: open a battle, go on for more turns, look at it, vote.

`POST /v1/arena/battles` → `{"id", "a": {"content", "finish_reason"}, "b": {...}, ...}` (no stage);
`POST /v1/arena/battles/{id}/turns` `{"content"}` → both sides' next answers;
`GET /v1/arena/battles/{id}` → the battle as its rater sees it (stages once voted);
`POST /v1/arena/battles/{id}/vote` `{"winner", "reasons"?, "comment"?}` → both stages revealed.
Campaigns: `POST /v1/arena/campaigns` (admin) loads a prompt set; `POST /v1/arena/campaigns/{id}/next`
gives the caller their next battle (and progress); `GET /v1/arena/campaigns/{id}` the campaign and the
caller's progress; `GET /v1/arena/campaigns/{id}/report` (admin) every rater's progress and accuracy
on gold, and the agreement.

Thin: authentication (the caller's client id is the rater: another key's battle is a 404) and
nothing about the stages on any response before the vote; the app's store-error handler answers a
battle in the wrong state (`BattleConflict`) with 409.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from server.arena import ArenaService, BattleRequest, TurnRequest, VoteRequest, blind_battle, reveal
from server.arena_campaigns import CampaignRequest, CampaignService, campaign_object
from server.auth import authenticate, require_admin
from server.errors import error_responses

router = APIRouter(prefix="/v1/arena")


def arena(request: Request) -> ArenaService:
    return request.app.state.arena


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
    return blind_battle(await service.complete(await service.turn(battle_id, body, rater)))


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
    return await arena(request).vote(battle_id, body, rater)


# -- campaigns --------------------------------------------------------------------------------------


def campaigns(request: Request) -> CampaignService:
    return CampaignService(arena(request))


@router.post("/campaigns", responses=error_responses(400, 401, 404))
async def create_campaign(body: CampaignRequest, request: Request) -> dict[str, Any]:
    authenticate(request, request.app.state.settings)
    require_admin(request, request.app.state.settings)
    return campaign_object(await campaigns(request).create(body))


def _progress(store, campaign_id: str, rater: str, campaign) -> dict[str, Any]:
    mine = store.campaign_progress(campaign_id).get(
        rater, {"assigned": 0, "voted": 0, "gold_voted": 0, "gold_right": 0}
    )
    # what the rater may see of their own record: not which battles were gold, nor how they did on them
    return {"voted": mine["voted"], "assigned": mine["assigned"], "queue": campaign.items + campaign.gold}


@router.get("/campaigns/{campaign_id}", responses=error_responses(401, 404))
def get_campaign(campaign_id: str, request: Request) -> dict[str, Any]:
    rater = authenticate(request, request.app.state.settings)
    store = request.app.state.store
    campaign = store.get_campaign(campaign_id)
    return {**campaign_object(campaign), "progress": _progress(store, campaign_id, rater, campaign)}


@router.post("/campaigns/{campaign_id}/next", responses=error_responses(400, 401, 404, 429, 503))
async def next_in_campaign(campaign_id: str, request: Request) -> dict[str, Any]:
    rater = authenticate(request, request.app.state.settings)
    service = campaigns(request)
    battle = await service.next_battle(campaign_id, rater)
    store = request.app.state.store

    def read() -> tuple[Any, dict[str, Any]]:  # store reads (a scan of the campaign): off the event loop
        campaign = store.get_campaign(campaign_id)
        return campaign, _progress(store, campaign_id, rater, campaign)

    campaign, progress = await asyncio.to_thread(read)
    return {
        "object": "arena.campaign.next",
        "campaign": campaign_id,
        "guidelines": campaign.guidelines,
        "battle": blind_battle(battle) if battle else None,
        "progress": progress,
    }


@router.get("/campaigns/{campaign_id}/report", responses=error_responses(401, 404))
def campaign_report(campaign_id: str, request: Request) -> dict[str, Any]:
    authenticate(request, request.app.state.settings)
    require_admin(request, request.app.state.settings)
    return campaigns(request).report(campaign_id)
