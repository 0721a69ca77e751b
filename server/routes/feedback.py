"""Feedback API: rate answers, state A/B preferences, list ratings, export TRL datasets.

Thin: validates the body's shape, maps the store's errors to OpenAI errors, renders OpenAI-style
objects. The store (`app.state.store`) decides what is valid; `server/export.py` owns the formats.
Handlers are plain `def`: the store is synchronous, so FastAPI runs them in its thread pool.

Who sees what: anyone with an API key may rate and list their own ratings; listing everyone's
ratings and exporting need the admin key whenever one is configured.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from server.auth import authenticate, require_admin
from server.errors import APIError, bad_request, not_found
from server.export import FORMATS, examples
from server.settings import Settings
from server.store import Feedback, Preference, Store, StoreError, UnknownResponse

router = APIRouter()

Messages = list[dict[str, Any]]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(description="The `id` of a response this server gave (choice i > 0: `id:i`).")
    rating: str = Field(description='"up" or "down".')
    comment: str | None = None
    tags: list[str] = Field(default_factory=list)
    # Needed only when the server does not log prompts: the text being rated.
    prompt: Messages | str | None = Field(default=None, description="The prompt messages (or completion prompt).")
    completion: str | None = Field(default=None, description="The answer's text.")


class PreferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_ids: list[str] = Field(description="Two responses to the same prompt: [A, B].")
    choice: str = Field(description='"a", "b", "tie" or "both_bad".')
    comment: str | None = None
    # Needed only when the server does not log prompts.
    prompt: Messages | str | None = None
    completions: list[str] | None = Field(default=None, description="The text of A and B, in order.")


def _store(request: Request) -> Store:
    return request.app.state.store


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _api_error(error: StoreError) -> APIError:
    if isinstance(error, UnknownResponse):
        return not_found(error.message, param=error.param)
    return bad_request(error.message, param=error.param)


def _unix(t: datetime) -> int:
    return int(t.timestamp())


def feedback_object(fb: Feedback) -> dict[str, Any]:
    return {
        "id": fb.id, "object": "feedback", "response_id": fb.response_id, "stage": fb.stage,
        "rating": fb.rating, "comment": fb.comment, "tags": fb.tags, "client_id": fb.rater,
        "created_at": _unix(fb.created_at), "updated_at": _unix(fb.updated_at),
    }


def preference_object(pref: Preference) -> dict[str, Any]:
    return {
        "id": pref.id, "object": "preference", "response_ids": list(pref.response_ids),
        "choice": pref.choice, "stages": [pref.stage_a, pref.stage_b], "comment": pref.comment,
        "client_id": pref.rater, "created_at": _unix(pref.created_at), "updated_at": _unix(pref.updated_at),
    }


def _parse_time(value: str | None, param: str) -> datetime | None:
    """Unix seconds or ISO 8601 (naive means UTC)."""
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(float(value), timezone.utc)
    except (ValueError, OverflowError):
        pass
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise bad_request(f"'{param}' must be Unix seconds or an ISO 8601 time; got {value!r}.", param) from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


def _is_admin(request: Request, settings: Settings) -> bool:
    try:
        require_admin(request, settings)
    except APIError:
        return False
    return True


@router.post("/v1/feedback")
def create_feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
    rater = authenticate(request, _settings(request))
    try:
        fb = _store(request).rate(body.response_id, body.rating, rater=rater, comment=body.comment,
                                  tags=body.tags, prompt=body.prompt, completion=body.completion)
    except StoreError as e:
        raise _api_error(e) from None
    return feedback_object(fb)


@router.post("/v1/preferences")
def create_preference(body: PreferenceRequest, request: Request) -> dict[str, Any]:
    rater = authenticate(request, _settings(request))
    try:
        pref = _store(request).prefer(body.response_ids, body.choice, rater=rater, comment=body.comment,
                                      prompt=body.prompt, completions=body.completions)
    except StoreError as e:
        raise _api_error(e) from None
    return preference_object(pref)


@router.get("/v1/feedback")
def list_feedback(
    request: Request,
    stage: str | None = None,
    rating: Literal["up", "down"] | None = None,
    since: str | None = Query(None, description="Rated at or after: Unix seconds or ISO 8601."),
    until: str | None = Query(None, description="Rated before: Unix seconds or ISO 8601."),
    limit: int = Query(20, ge=1, le=1000),
    after: str | None = Query(None, description="The `last_id` of the previous page."),
) -> dict[str, Any]:
    settings = _settings(request)
    client_id = authenticate(request, settings)
    rater = None if _is_admin(request, settings) else client_id  # others see only their own ratings
    try:
        page, has_more = _store(request).list_feedback(
            stage=stage, rating=rating, rater=rater, since=_parse_time(since, "since"),
            until=_parse_time(until, "until"), limit=limit, after=after)
    except StoreError as e:
        raise _api_error(e) from None
    data = [feedback_object(fb) for fb in page]
    listing: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if data:
        listing["first_id"], listing["last_id"] = data[0]["id"], data[-1]["id"]
    return listing


@router.get("/v1/feedback/export")
def export_feedback(request: Request, format: str = "kto", stage: str | None = None) -> StreamingResponse:
    require_admin(request, _settings(request))
    if format not in FORMATS:
        raise bad_request(f"'format' must be one of {', '.join(FORMATS)}; got {format!r}.", "format")
    rows = examples(_store(request), format, stage=stage)

    def lines() -> Iterator[bytes]:
        for row in rows:
            yield (json.dumps(row, ensure_ascii=False) + "\n").encode()

    filename = f"stagechat-{format}.jsonl"
    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={"content-disposition": f'attachment; filename="{filename}"'})
