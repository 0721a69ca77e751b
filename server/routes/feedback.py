"""Feedback API: rate answers, state A/B preferences, rank 2..4 answers, correct answers, list and
delete one's own, export TRL datasets.

Thin: validates the body's shape and renders OpenAI-style objects. The store (`app.state.store`)
decides what is valid; its refusals (`StoreError`) rise to the app's handler, which answers them as
OpenAI errors (`server.errors.from_store_error`). `server/export.py` owns the formats. Handlers are
plain `def`: the store is synchronous, so FastAPI runs them in its thread pool.

Who sees what: anyone with an API key may rate, and list and delete their own ratings, preferences,
rankings and corrections; the admin key (when one is configured) lists and deletes everyone's and
exports. An export with `min_gold_accuracy` leaves out raters below it on gold questions, as the
leaderboard does, and names them in the `x-stagechat-excluded-raters` header (comma-separated).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from server.auth import authenticate, require_admin
from server.errors import APIError, bad_request
from server.export import FORMATS, RaterFilter, examples
from server.routes.params import CURSOR, TIME, parse_time
from server.settings import Settings
from server.store.records import CHOICES, MAX_RANKED, RATINGS, Correction, Feedback, Preference, Ranking

if TYPE_CHECKING:
    from server.store import Store

router = APIRouter()
# The schema names the formats; the route still refuses others itself, with a message naming them.
ExportFormat = Annotated[str, WithJsonSchema({"type": "string", "enum": list(FORMATS), "default": "kto"})]

Messages = list[dict[str, Any]]
EXCLUDED_HEADER = "x-stagechat-excluded-raters"  # the raters an export left out, comma-separated


# The request models state in the schema (`json_schema_extra`) what the store checks, so a client
# generating requests from the spec sends what is accepted; the store still refuses the rest itself,
# with its own messages.


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(
        description="The `id` of a response this server gave (choice i > 0: `id:i`).",
        json_schema_extra={"minLength": 1},
    )
    rating: str = Field(description='"up" or "down".', json_schema_extra={"enum": list(RATINGS)})
    comment: str | None = None
    tags: list[str] = Field(default_factory=list)
    # Needed only when the server does not log prompts: the text being rated.
    prompt: Messages | str | None = Field(default=None, description="The prompt messages (or completion prompt).")
    completion: str | None = Field(default=None, description="The answer's text.")


class PreferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_ids: list[str] = Field(
        description="Two responses to the same prompt: [A, B].",
        json_schema_extra={"minItems": 2, "maxItems": 2, "uniqueItems": True},
    )
    choice: str = Field(description='"a", "b", "tie" or "both_bad".', json_schema_extra={"enum": list(CHOICES)})
    comment: str | None = None
    # Needed only when the server does not log prompts.
    prompt: Messages | str | None = None
    completions: list[str] | None = Field(default=None, description="The text of A and B, in order.")


class RankingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_ids: list[str] = Field(
        description="2 to 4 responses to the same conversation, each once.",
        json_schema_extra={"minItems": 2, "maxItems": MAX_RANKED, "uniqueItems": True},
    )
    ranking: list[list[str]] = Field(
        description="Groups of those ids, best first; ids in one group tie.",
        json_schema_extra={"minItems": 1, "items": {"type": "array", "minItems": 1, "items": {"type": "string"}}},
    )
    comment: str | None = None
    # Needed only when the server does not log prompts.
    prompt: Messages | str | None = None
    completions: list[str] | None = Field(default=None, description="The answers' text, in response_ids order.")


class CorrectionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(description="The `id` of a response this server gave.", json_schema_extra={"minLength": 1})
    completion: str = Field(
        description="What the answer should have been.", json_schema_extra={"minLength": 1, "pattern": r"\S"}
    )  # not blank
    comment: str | None = None
    # Needed only when the server does not log prompts: the prompt and the answer as given.
    prompt: Messages | str | None = None
    original: str | None = Field(default=None, description="The answer's text as the server gave it.")


def _store(request: Request) -> Store:
    return request.app.state.store


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _unix(t: datetime) -> int:
    return int(t.timestamp())


def feedback_object(fb: Feedback) -> dict[str, Any]:
    return {
        "id": fb.id,
        "object": "feedback",
        "response_id": fb.response_id,
        "stage": fb.stage,
        "rating": fb.rating,
        "comment": fb.comment,
        "tags": fb.tags,
        "client_id": fb.rater,
        "created_at": _unix(fb.created_at),
        "updated_at": _unix(fb.updated_at),
    }


def preference_object(pref: Preference) -> dict[str, Any]:
    return {
        "id": pref.id,
        "object": "preference",
        "response_ids": list(pref.response_ids),
        "choice": pref.choice,
        "stages": [pref.stage_a, pref.stage_b],
        "comment": pref.comment,
        "client_id": pref.rater,
        "created_at": _unix(pref.created_at),
        "updated_at": _unix(pref.updated_at),
    }


def ranking_object(r: Ranking) -> dict[str, Any]:
    return {
        "id": r.id,
        "object": "ranking",
        "response_ids": r.response_ids,
        "ranking": r.ranking,
        "stages": r.stages,
        "comment": r.comment,
        "client_id": r.rater,
        "created_at": _unix(r.created_at),
        "updated_at": _unix(r.updated_at),
    }


def correction_object(c: Correction) -> dict[str, Any]:
    return {
        "id": c.id,
        "object": "correction",
        "response_id": c.response_id,
        "stage": c.stage,
        "completion": c.completion,
        "comment": c.comment,
        "client_id": c.rater,
        "created_at": _unix(c.created_at),
        "updated_at": _unix(c.updated_at),
    }


OBJECTS = {
    "feedback": feedback_object,
    "preference": preference_object,
    "ranking": ranking_object,
    "correction": correction_object,
}


def _listing(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """An OpenAI-style list page."""
    listing: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if data:
        listing["first_id"], listing["last_id"] = data[0]["id"], data[-1]["id"]
    return listing


def _is_admin(request: Request, settings: Settings) -> bool:
    try:
        require_admin(request, settings)
    except APIError:
        return False
    return True


def write_judgement(store: Store, kind: str, body: BaseModel, rater: str) -> dict[str, Any]:
    """Store one rating, preference, ranking or correction (`kind`, a `JUDGEMENT_BODIES` key) and answer
    its object: the one write both the HTTP routes below and the WebSocket's frames make. Blocking."""
    if kind == "feedback":
        return feedback_object(
            store.rate(
                body.response_id,
                body.rating,
                rater=rater,
                comment=body.comment,
                tags=body.tags,
                prompt=body.prompt,
                completion=body.completion,
            )
        )
    if kind == "preference":
        return preference_object(
            store.prefer(
                body.response_ids,
                body.choice,
                rater=rater,
                comment=body.comment,
                prompt=body.prompt,
                completions=body.completions,
            )
        )
    if kind == "ranking":
        return ranking_object(
            store.rank(
                body.response_ids,
                body.ranking,
                rater=rater,
                comment=body.comment,
                prompt=body.prompt,
                completions=body.completions,
            )
        )
    return correction_object(
        store.correct(
            body.response_id,
            body.completion,
            rater=rater,
            comment=body.comment,
            prompt=body.prompt,
            original=body.original,
        )
    )


JUDGEMENT_BODIES: dict[str, type[BaseModel]] = {
    "feedback": FeedbackRequest,
    "preference": PreferenceRequest,
    "ranking": RankingRequest,
    "correction": CorrectionRequest,
}


@router.post("/v1/feedback")
def create_feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
    return write_judgement(_store(request), "feedback", body, authenticate(request, _settings(request)))


@router.post("/v1/preferences")
def create_preference(body: PreferenceRequest, request: Request) -> dict[str, Any]:
    return write_judgement(_store(request), "preference", body, authenticate(request, _settings(request)))


@router.post("/v1/rankings")
def create_ranking(body: RankingRequest, request: Request) -> dict[str, Any]:
    return write_judgement(_store(request), "ranking", body, authenticate(request, _settings(request)))


@router.post("/v1/corrections")
def create_correction(body: CorrectionRequest, request: Request) -> dict[str, Any]:
    return write_judgement(_store(request), "correction", body, authenticate(request, _settings(request)))


def _own_items(
    request: Request, kind: str, since: str | None, until: str | None, limit: int, after: str | None
) -> dict[str, Any]:
    settings = _settings(request)
    client_id = authenticate(request, settings)
    rater = None if _is_admin(request, settings) else client_id  # others see only their own
    page, has_more = _store(request).list_items(
        kind, rater=rater, since=parse_time(since, "since"), until=parse_time(until, "until"), limit=limit, after=after
    )
    return _listing([OBJECTS[kind](item) for item in page], has_more)


def _list_route(path: str, kind: str) -> None:
    def list_items(
        request: Request,
        since: Annotated[str | None, Query(description="Stated at or after: Unix seconds or ISO 8601."), TIME] = None,
        until: Annotated[str | None, Query(description="Stated before: Unix seconds or ISO 8601."), TIME] = None,
        limit: int = Query(20, ge=1, le=1000),
        after: Annotated[str | None, Query(description="The `last_id` of the previous page."), CURSOR] = None,
    ) -> dict[str, Any]:
        return _own_items(request, kind, since, until, limit, after)

    list_items.__name__ = f"list_{kind}s"
    router.get(path, summary=f"List your {kind}s (the admin: everyone's)")(list_items)


def _delete_route(path: str, kind: str) -> None:
    def delete_item(item_id: str, request: Request) -> dict[str, Any]:
        settings = _settings(request)
        client_id = authenticate(request, settings)
        rater = None if _is_admin(request, settings) else client_id
        _store(request).delete(kind, item_id, rater=rater)
        return {"id": item_id, "object": f"{kind}.deleted", "deleted": True}

    delete_item.__name__ = f"delete_{kind}"
    router.delete(path + "/{item_id}", summary=f"Delete one of your {kind}s (the admin: anyone's)")(delete_item)


for _path, _kind in [("/v1/preferences", "preference"), ("/v1/rankings", "ranking"), ("/v1/corrections", "correction")]:
    _list_route(_path, _kind)
for _path, _kind in [
    ("/v1/feedback", "feedback"),
    ("/v1/preferences", "preference"),
    ("/v1/rankings", "ranking"),
    ("/v1/corrections", "correction"),
]:
    _delete_route(_path, _kind)


@router.get("/v1/feedback")
def list_feedback(
    request: Request,
    stage: str | None = None,
    rating: Literal["up", "down"] | None = None,
    since: Annotated[str | None, Query(description="Rated at or after: Unix seconds or ISO 8601."), TIME] = None,
    until: Annotated[str | None, Query(description="Rated before: Unix seconds or ISO 8601."), TIME] = None,
    limit: int = Query(20, ge=1, le=1000),
    after: Annotated[str | None, Query(description="The `last_id` of the previous page."), CURSOR] = None,
) -> dict[str, Any]:
    settings = _settings(request)
    client_id = authenticate(request, settings)
    rater = None if _is_admin(request, settings) else client_id  # others see only their own ratings
    page, has_more = _store(request).list_feedback(
        stage=stage,
        rating=rating,
        rater=rater,
        since=parse_time(since, "since"),
        until=parse_time(until, "until"),
        limit=limit,
        after=after,
    )
    return _listing([feedback_object(fb) for fb in page], has_more)


@router.get(
    "/v1/feedback/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One JSON example per line (TRL dataset rows)",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
)
def export_feedback(
    request: Request,
    format: ExportFormat = "kto",
    stage: str | None = None,
    min_gold_accuracy: float | None = Query(
        None,
        ge=0,
        le=1,
        description="Leave out raters whose accuracy on arena gold questions is below this (as the leaderboard "
        "does); the `x-stagechat-excluded-raters` header names them.",
    ),
) -> StreamingResponse:
    require_admin(request, _settings(request))
    if format not in FORMATS:
        raise bad_request(f"'format' must be one of {', '.join(FORMATS)}; got {format!r}.", "format")
    raters = RaterFilter.read(_store(request), min_gold_accuracy)
    rows = examples(_store(request), format, stage=stage, raters=raters)
    # The first row is read before the answer starts: a store that cannot be read (down, a data dir
    # gone read-only) is still a 503 with a JSON body, not a 200 cut short.
    first = next(rows, None)

    def lines() -> Iterator[bytes]:
        for row in itertools.chain([first] if first is not None else [], rows):
            yield (json.dumps(row, ensure_ascii=False) + "\n").encode()

    filename = f"stagechat-{format}.jsonl"
    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={
            "content-disposition": f'attachment; filename="{filename}"',
            EXCLUDED_HEADER: ",".join(raters.excluded),
        },
    )
