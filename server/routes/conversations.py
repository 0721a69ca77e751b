"""The Conversations API: saved conversations (trees of messages) and their read-only share links.

    GET    /v1/conversations                          the caller's (the admin: everyone's); ?q= searches
    POST   /v1/conversations                          a new one, with a first chain of messages
    GET    /v1/conversations/{id}                     one, with its whole tree (and the ratings of its answers)
    PATCH  /v1/conversations/{id}                     rename
    DELETE /v1/conversations/{id}                     with its messages and share links
    POST   /v1/conversations/{id}/messages            a chain under `parent_id`: a parent with a child branches
    GET    /v1/conversations/{id}/branches/{message}  the branch ending at a message, as OpenAI chat messages
    GET    /v1/conversations/{id}/export              the whole tree as JSON …
    POST   /v1/conversations/import                   … and back, as a new conversation (malformed: 400)
    POST   /v1/conversations/{id}/share               a share link (to the tree, or to a branch: `message_id`)
    GET    /v1/conversations/{id}/shares              its share links
    GET    /v1/shared/{share_id}                      what a link shows: no key needed, read only
    GET    /shared/{share_id}                         the same as a page, for a browser
    DELETE /v1/shared/{share_id}                      revoke it (its owner or the admin)

Thin: the owner scope and shapes are `server/conversations.py`'s, the rules the store's
(`server/store/conversations.py`), whose refusals rise to the app's handler (unknown or foreign: 404;
invalid: 400). Handlers are plain `def`: the store is synchronous, FastAPI runs them in its thread pool.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from server.conversations import (
    Caller,
    caller,
    conversation_object,
    export_object,
    import_messages,
    message_object,
    openai_messages,
    share_object,
    shared_page,
)
from server.errors import error_responses
from server.store.records import NewMessage, UnknownConversation

router = APIRouter(prefix="/v1", tags=["conversations"])
pages = APIRouter(tags=["conversations"])  # outside /v1: what a share link opens in a browser


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(description="system, developer, user, assistant or tool.")
    content: str
    stage: str | None = None
    sampling: dict[str, Any] | None = None
    speculative: dict[str, Any] | None = None
    reward_score: float | None = None
    generation_id: str | None = Field(None, description="The logged answer this message is (its ratings follow it).")

    def new(self) -> NewMessage:
        return NewMessage(**self.model_dump())


class ConversationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, description="Default: the first user message's first line.")
    messages: list[MessageIn] = Field(default_factory=list, description="A first chain, each the reply to the last.")


class Rename(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str


class MessagesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parent_id: str | None = Field(
        description="The message these answer (null: a new root). A parent that already has a child gets a branch."
    )
    messages: list[MessageIn] = Field(min_length=1)


class ShareIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: str | None = Field(None, description="Share only the branch ending here (default: the whole tree).")


def _store(request: Request):
    return request.app.state.store


def _who(request: Request) -> Caller:
    return caller(request, request.app.state.settings)


def _full(request: Request, conversation_id: str, who: Caller) -> dict[str, Any]:
    store = _store(request)
    conversation = store.get_conversation(conversation_id, viewer=who.viewer)
    messages = store.conversation_messages(conversation_id, viewer=who.viewer)
    ratings = store.message_ratings(messages)
    body = conversation_object(conversation)
    body["messages"] = [
        {**message_object(m), "ratings": [{"client_id": r, "rating": v} for r, v in ratings.get(m.id, [])]}
        for m in messages
    ]
    return body


_ERRORS = error_responses(400, 401, 404)


@router.get("/conversations", summary="List your conversations (the admin: everyone's)", responses=_ERRORS)
def list_conversations(
    request: Request,
    q: str | None = Query(None, description="Text in a title or message."),
    limit: int = Query(50, ge=1, le=100),
) -> dict[str, Any]:
    who = _who(request)
    page, has_more = _store(request).list_conversations(viewer=who.viewer, query=q, limit=limit)
    return {"object": "list", "data": [conversation_object(c) for c in page], "has_more": has_more}


@router.post("/conversations", summary="Save a new conversation", responses=_ERRORS)
def create_conversation(body: ConversationIn, request: Request) -> dict[str, Any]:
    who = _who(request)
    conversation, _ = _store(request).create_conversation(
        owner=who.owner, title=body.title, messages=[m.new() for m in body.messages]
    )
    return _full(request, conversation.id, who)


@router.post("/conversations/import", summary="Import an exported tree as a new conversation", responses=_ERRORS)
def import_conversation(request: Request, tree: dict[str, Any] = Body(...)) -> dict[str, Any]:
    who = _who(request)
    title, messages = import_messages(tree)
    conversation, _ = _store(request).import_conversation(owner=who.owner, title=title, messages=messages)
    return _full(request, conversation.id, who)


@router.get("/conversations/{conversation_id}", summary="A conversation with its whole tree", responses=_ERRORS)
def get_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
    return _full(request, conversation_id, _who(request))


@router.patch("/conversations/{conversation_id}", summary="Rename a conversation", responses=_ERRORS)
def rename_conversation(conversation_id: str, body: Rename, request: Request) -> dict[str, Any]:
    who = _who(request)
    return conversation_object(_store(request).rename_conversation(conversation_id, body.title, viewer=who.viewer))


@router.delete("/conversations/{conversation_id}", summary="Delete a conversation", responses=_ERRORS)
def delete_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
    _store(request).delete_conversation(conversation_id, viewer=_who(request).viewer)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


@router.post(
    "/conversations/{conversation_id}/messages",
    summary="Add messages (a branch when the parent has a child already)",
    responses=_ERRORS,
)
def add_messages(conversation_id: str, body: MessagesIn, request: Request) -> dict[str, Any]:
    who = _who(request)
    written = _store(request).add_messages(
        conversation_id, body.parent_id, [m.new() for m in body.messages], viewer=who.viewer
    )
    return {"object": "list", "data": [message_object(m) for m in written]}


@router.get(
    "/conversations/{conversation_id}/branches/{message_id}",
    summary="The branch ending at a message, as OpenAI chat messages",
    responses=_ERRORS,
)
def branch(conversation_id: str, message_id: str, request: Request) -> dict[str, Any]:
    who = _who(request)
    store = _store(request)
    store.get_conversation(conversation_id, viewer=who.viewer)
    path = store.message_path(message_id, viewer=who.viewer)
    if path[-1].conversation_id != conversation_id:
        raise UnknownConversation(f"No message {message_id!r} in conversation {conversation_id!r}.", "message_id")
    return {
        "object": "conversation.branch",
        "conversation_id": conversation_id,
        "message_id": message_id,
        "messages": openai_messages(path),
    }


@router.get("/conversations/{conversation_id}/export", summary="The whole tree as JSON", responses=_ERRORS)
def export_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
    who = _who(request)
    store = _store(request)
    return export_object(
        store.get_conversation(conversation_id, viewer=who.viewer),
        store.conversation_messages(conversation_id, viewer=who.viewer),
    )


@router.post("/conversations/{conversation_id}/share", summary="Make a read-only share link", responses=_ERRORS)
def share(conversation_id: str, request: Request, body: ShareIn | None = None) -> dict[str, Any]:
    who = _who(request)
    made = _store(request).share_conversation(conversation_id, body.message_id if body else None, viewer=who.viewer)
    return share_object(made)


@router.get("/conversations/{conversation_id}/shares", summary="A conversation's share links", responses=_ERRORS)
def list_shares(conversation_id: str, request: Request) -> dict[str, Any]:
    shares = _store(request).list_shares(conversation_id, viewer=_who(request).viewer)
    return {"object": "list", "data": [share_object(s) for s in shares]}


@router.get("/shared/{share_id}", summary="What a share link shows (no key needed)", responses=error_responses(404))
def shared(share_id: str, request: Request) -> dict[str, Any]:
    link, conversation, messages = _store(request).shared(share_id)
    return {
        "id": link.id,
        "object": "conversation.shared",
        "title": conversation.title,
        "message_id": link.message_id,
        "created_at": conversation_object(conversation)["created_at"],
        "messages": [message_object(m, shared=True) for m in messages],
    }


@router.delete("/shared/{share_id}", summary="Revoke a share link (its owner or the admin)", responses=_ERRORS)
def revoke(share_id: str, request: Request) -> dict[str, Any]:
    _store(request).revoke_share(share_id, viewer=_who(request).viewer)
    return {"id": share_id, "object": "conversation.share.deleted", "deleted": True}


@pages.get(
    "/shared/{share_id}",
    summary="A share link as a web page (no key needed)",
    response_class=HTMLResponse,
    responses=error_responses(404),
)
def shared_html(share_id: str, request: Request) -> HTMLResponse:
    _, conversation, messages = _store(request).shared(share_id)
    # No script may run on it, and it says so: a shared text is someone else's words.
    return HTMLResponse(
        shared_page(conversation.title, messages),
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "Referrer-Policy": "no-referrer",
        },
    )
