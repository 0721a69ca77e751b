"""`GET /v1/leaderboard`: Bradley–Terry strengths per stage with bootstrap 95% intervals, votes,
win rates and rater agreement, from the store's preferences and rankings (`server/leaderboard.py`).

Thin: parses the filters (time window, rater), reads the judgements and fits — a plain `def`, so
FastAPI runs the store read and the statistics in its thread pool, off the event loop.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from server.auth import authenticate
from server.leaderboard import BOOTSTRAP, leaderboard
from server.routes.params import TIME, parse_time

router = APIRouter()


@router.get("/v1/leaderboard")
def get_leaderboard(
    request: Request,
    since: Annotated[str | None, Query(description="Judged at or after: Unix seconds or ISO 8601."), TIME] = None,
    until: Annotated[str | None, Query(description="Judged before: Unix seconds or ISO 8601."), TIME] = None,
    rater: str | None = Query(None, description="Only this rater's judgements (a client id)."),
    bootstrap: int = Query(BOOTSTRAP, ge=0, le=2000, description="Bootstrap resamples for the intervals."),
    seed: int = Query(0, ge=0, le=2**32 - 1, description="Seed of the bootstrap."),
) -> dict[str, Any]:
    authenticate(request, request.app.state.settings)
    store = request.app.state.store
    judgements = store.iter_judgements(since=parse_time(since, "since"), until=parse_time(until, "until"),
                                       rater=rater)
    board = leaderboard(judgements, bootstrap=bootstrap, seed=seed)
    body = board.to_dict()
    body["filters"] = {"since": since, "until": until, "rater": rater}
    return body
