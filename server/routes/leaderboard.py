"""`GET /v1/leaderboard`: Bradley–Terry strengths per stage with bootstrap 95% intervals, votes,
win rates, rater agreement and per-rater counts (`server/leaderboard.py`); beside them the
style-controlled strengths and the arena's position bias (`server/style_control.py`), and how often
each reward model orders judged pairs as the voters did (`reward_agreement`,
`server/reward_agreement.py`, from cached scores only). `GET /v1/leaderboard/lineage`: the rounds of
each family with human strength, mean reward and KL to the parent (`server/lineage.py`).
`POST /v1/leaderboard/reward_scores`: score the judged answers not scored yet with the registry's
reward models, so the GETs stay fast.

`votes=blind` reads only the arena's blind votes, `votes=all` adds the named preferences and
rankings (Compare, `POST /v1/preferences`, `/v1/rankings`); the default is blind as soon as one
blind vote exists. Thin: parses the filters, reads the judgements and fits — the GETs are plain
`def`s, so FastAPI runs the store reads and the statistics in its thread pool, off the event loop.
A query parameter these routes do not read is a 400 naming it, never ignored.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from server.auth import authenticate
from server.errors import bad_request
from server.leaderboard import BOOTSTRAP, board_body, leaderboard, read_judgements
from server.lineage import lineage
from server.reward_agreement import SCORE_LIMIT, read_agreement, score_judged
from server.routes.params import TIME, only, parse_time

router = APIRouter()

_FILTERS = ("since", "until", "rater", "votes", "min_gold_accuracy", "bootstrap", "seed")


def _registry(request: Request):
    """The served registry (None for an app without a serving layer: no reward models, no lineage)."""
    service = getattr(request.app.state, "service", None)
    return None if service is None else service.pool.registry


def _judgements(store, votes, since, until, rater, min_gold_accuracy):
    """The judgements the filters select: (votes read, judgements, raters left out for gold)."""
    return read_judgements(
        store,
        votes,
        since=parse_time(since, "since"),
        until=parse_time(until, "until"),
        rater=rater,
        min_gold_accuracy=min_gold_accuracy,
    )


Since = Annotated[str | None, Query(description="Judged at or after: Unix seconds or ISO 8601."), TIME]
Until = Annotated[str | None, Query(description="Judged before: Unix seconds or ISO 8601."), TIME]
Rater = Annotated[str | None, Query(description="Only this rater's judgements (a client id).")]
Votes = Annotated[
    Literal["blind", "all"] | None,
    Query(
        description="blind: arena votes only; all: with named preferences and rankings. "
        "Default: blind when any blind vote exists, else all."
    ),
]
MinGold = Annotated[
    float | None,
    Query(ge=0, le=1, description="Leave out raters whose accuracy on arena gold questions is below this."),
]
Bootstrap = Annotated[int, Query(ge=0, le=2000, description="Bootstrap resamples for the intervals.")]
Seed = Annotated[int, Query(ge=0, le=2**32 - 1, description="Seed of the bootstrap.")]


@router.get("/v1/leaderboard")
def get_leaderboard(
    request: Request,
    since: Since = None,
    until: Until = None,
    rater: Rater = None,
    votes: Votes = None,
    min_gold_accuracy: MinGold = None,
    bootstrap: Bootstrap = BOOTSTRAP,
    seed: Seed = 0,
) -> dict[str, Any]:
    authenticate(request, request.app.state.settings)
    only(request, _FILTERS)
    store = request.app.state.store
    chosen, judgements, excluded = _judgements(store, votes, since, until, rater, min_gold_accuracy)
    body = board_body(store, judgements, bootstrap=bootstrap, seed=seed)
    body["reward_agreement"] = read_agreement(store, _registry(request), judgements)
    body["votes"] = chosen
    body["excluded_raters"] = excluded
    body["filters"] = {
        "since": since,
        "until": until,
        "rater": rater,
        "votes": votes,
        "min_gold_accuracy": min_gold_accuracy,
    }
    return body


@router.get("/v1/leaderboard/lineage")
def get_lineage(
    request: Request,
    family: str | None = Query(None, description="Only the family holding this stage."),
    since: Since = None,
    until: Until = None,
    rater: Rater = None,
    votes: Votes = None,
    min_gold_accuracy: MinGold = None,
    bootstrap: Bootstrap = BOOTSTRAP,
    seed: Seed = 0,
) -> dict[str, Any]:
    authenticate(request, request.app.state.settings)
    only(request, ("family", *_FILTERS))
    registry = _registry(request)
    if registry is None:
        raise bad_request("This server has no stage registry, so no lineage.", param=None)
    if family is not None and family not in registry.stages:
        raise bad_request(
            f"'family': {family!r} is not a stage. Stages: {', '.join(registry.stages)}.",
            param="family",
            code="model_not_found",
        )
    store = request.app.state.store
    chosen, judgements, _ = _judgements(store, votes, since, until, rater, min_gold_accuracy)
    board = {**leaderboard(judgements, bootstrap=bootstrap, seed=seed).to_dict(), "votes": chosen}
    return lineage(registry, board, read_agreement(store, registry, judgements), family=family)


class ScoreRequest(BaseModel):
    """What `POST /v1/leaderboard/reward_scores` reads; any other field is a 400 naming it."""

    model_config = ConfigDict(extra="forbid")

    reward_models: list[str] | None = Field(
        None, min_length=1, description="Score with these reward models (default: every one of the registry)."
    )
    limit: int = Field(SCORE_LIMIT, ge=1, le=SCORE_LIMIT, description="Answers to score at most, per reward model.")


@router.post("/v1/leaderboard/reward_scores")
async def post_reward_scores(request: Request, body: ScoreRequest | None = None) -> dict[str, Any]:
    """Score every judged answer (arena votes and named judgements) a reward model has not scored yet."""
    authenticate(request, request.app.state.settings)
    only(request, ())
    body = body or ScoreRequest()
    service = getattr(request.app.state, "service", None)
    rewards = None if service is None else service.rewards
    if rewards is None:
        raise bad_request("This server has no reward models to score with.", param="reward_models")
    known = rewards.names()
    for i, name in enumerate(body.reward_models or []):
        if name not in known:
            raise bad_request(
                f"'reward_models[{i}]': {name!r} is not a reward model. Reward models: {', '.join(known) or 'none'}.",
                param=f"reward_models[{i}]",
                code="model_not_found",
            )
    store = request.app.state.store
    _, judgements, _ = await asyncio.to_thread(read_judgements, store, "all")
    return await score_judged(rewards, store, judgements, models=body.reward_models, limit=body.limit)
