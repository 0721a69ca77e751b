"""`GET /v1/leaderboard`: Bradley–Terry strengths per stage with bootstrap 95% intervals, votes,
win rates, rater agreement and per-rater counts (`server/leaderboard.py`); beside them the
style-controlled strengths and the arena's position bias (`server/style_control.py`).

`votes=blind` reads only the arena's blind votes, `votes=all` adds the named preferences and
rankings (Compare, `POST /v1/preferences`, `/v1/rankings`); the default is blind as soon as one
blind vote exists. Thin: parses the filters, reads the judgements and fits — a plain `def`, so
FastAPI runs the store reads and the statistics in its thread pool, off the event loop.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

from server.auth import authenticate
from server.leaderboard import BOOTSTRAP, board_body, read_judgements
from server.routes.params import TIME, parse_time

router = APIRouter()


@router.get("/v1/leaderboard")
def get_leaderboard(
    request: Request,
    since: Annotated[str | None, Query(description="Judged at or after: Unix seconds or ISO 8601."), TIME] = None,
    until: Annotated[str | None, Query(description="Judged before: Unix seconds or ISO 8601."), TIME] = None,
    rater: str | None = Query(None, description="Only this rater's judgements (a client id)."),
    votes: Literal["blind", "all"] | None = Query(
        None,
        description="blind: arena votes only; all: with named preferences and rankings. "
        "Default: blind when any blind vote exists, else all.",
    ),
    min_gold_accuracy: float | None = Query(
        None, ge=0, le=1, description="Leave out raters whose accuracy on arena gold questions is below this."
    ),
    bootstrap: int = Query(BOOTSTRAP, ge=0, le=2000, description="Bootstrap resamples for the intervals."),
    seed: int = Query(0, ge=0, le=2**32 - 1, description="Seed of the bootstrap."),
) -> dict[str, Any]:
    authenticate(request, request.app.state.settings)
    store = request.app.state.store
    chosen, judgements, excluded = read_judgements(
        store,
        votes,
        since=parse_time(since, "since"),
        until=parse_time(until, "until"),
        rater=rater,
        min_gold_accuracy=min_gold_accuracy,
    )
    body = board_body(store, judgements, bootstrap=bootstrap, seed=seed)
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
