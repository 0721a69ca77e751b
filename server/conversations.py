"""Who may see which saved conversation, and conversations as the API shows them.

What it knows: the owner rules every front door shares (the Responses API, the Conversations API, the
UI): with API keys configured a conversation belongs to the key that made it (its client id) and only
that key, or the admin key, sees it; without keys there are no owners and every caller sees every
conversation. And the JSON shapes: a conversation, a message (with its stage, decoding settings,
speculation figures, reward score and the generation it came from), a whole tree for export (and back,
for import), a branch as OpenAI chat messages, and what a share link shows (no client ids, no ratings,
no generation ids). And the one way a front door that generated an answer saves its turn — the answer as
a message (`answer_message`) and the turn written under the branch it continued (`save_turn`) — which
the Responses API and the WebSocket share.

What it does not know: SQL (`server/store/conversations.py`) or how answers are produced.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

from server.auth import authenticate, bearer_token
from server.errors import bad_request
from server.protocol import speculative_body
from server.settings import Settings
from server.store.records import Conversation, ConversationMessage, NewMessage, Share

if TYPE_CHECKING:
    from server.serving import Generation
    from server.store import Store

EXPORT_FORMAT = "stagechat.conversation.v1"


@dataclass(frozen=True)
class Caller:
    """The caller as the conversation store sees it."""

    client_id: str
    owner: str | None  # what a conversation they make is stamped with (None: no keys, no owners)
    viewer: str | None  # what their reads are scoped to (None: everything — the admin, or no keys)


def caller(conn: HTTPConnection, settings: Settings) -> Caller:
    """The caller's scope; 401 when keys are configured and the caller has none of them."""
    client = authenticate(conn, settings)
    return scope(client, settings, is_admin=bool(settings.admin_key) and bearer_token(conn) == settings.admin_key)


def scope(client_id: str, settings: Settings, *, is_admin: bool = False) -> Caller:
    """The scope of an authenticated client id (the UI, which authenticates its own way, calls this)."""
    if not settings.api_keys:
        return Caller(client_id, None, None)
    return Caller(client_id, client_id, None if is_admin else client_id)


def _unix(t: datetime) -> int:
    return int(t.timestamp())


def conversation_object(c: Conversation, *, with_owner: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": c.id,
        "object": "conversation",
        "title": c.title,
        "created_at": _unix(c.created_at),
        "updated_at": _unix(c.updated_at),
    }
    if with_owner:
        body["client_id"] = c.owner
    return body


def message_object(m: ConversationMessage, *, shared: bool = False) -> dict[str, Any]:
    """A node of the tree. Shared: only what a reader without a key may see (no generation link, so no way
    to its ratings; no decoding details)."""
    body: dict[str, Any] = {
        "id": m.id,
        "object": "conversation.message",
        "parent_id": m.parent_id,
        "role": m.role,
        "content": m.content,
        "stage": m.stage,
        "deleted": m.deleted,
        "created_at": _unix(m.created_at),
    }
    if not shared:
        body.update(
            sampling=m.sampling, speculative=m.speculative, reward_score=m.reward_score, generation_id=m.generation_id
        )
    return body


def share_object(s: Share) -> dict[str, Any]:
    return {
        "id": s.id,
        "object": "conversation.share",
        "conversation_id": s.conversation_id,
        "message_id": s.message_id,
        "url": f"/v1/shared/{s.id}",
        "page": f"/shared/{s.id}",
        "created_at": _unix(s.created_at),
    }


def export_object(c: Conversation, messages: list[ConversationMessage]) -> dict[str, Any]:
    """The whole tree, as `import_messages` reads it back."""
    return {
        "format": EXPORT_FORMAT,
        "title": c.title,
        "created_at": _unix(c.created_at),
        "messages": [
            {
                "id": m.id,
                "parent_id": m.parent_id,
                "role": m.role,
                "content": m.content,
                "stage": m.stage,
                "sampling": m.sampling,
                "speculative": m.speculative,
                "reward_score": m.reward_score,
            }
            for m in messages
            if not m.deleted
        ],
    }


_IMPORTED = ("id", "parent_id", "role", "content", "stage", "sampling", "speculative", "reward_score")


def import_messages(tree: Any) -> tuple[str | None, list[NewMessage]]:
    """An exported tree's title and messages (the store checks that they make a tree). Deleted messages
    are left out of exports, so a tree whose branch went through one imports with that branch cut."""
    if not isinstance(tree, dict) or not isinstance(tree.get("messages"), list):
        raise bad_request(
            "An import is an object with a 'messages' list (as GET /v1/conversations/{id}/export gives).",
            param="messages",
        )
    if tree.get("format", EXPORT_FORMAT) != EXPORT_FORMAT:
        raise bad_request(
            f"Unknown export format {tree.get('format')!r}; this server reads {EXPORT_FORMAT!r}.", param="format"
        )
    messages = []
    for i, m in enumerate(tree["messages"]):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] is not an object.", param="messages")
        unknown = set(m) - set(_IMPORTED) - {"created_at", "object", "deleted"}
        if unknown:
            raise bad_request(f"messages[{i}] has unknown field(s): {', '.join(sorted(unknown))}.", param="messages")
        if "role" not in m or "content" not in m:
            raise bad_request(f"messages[{i}] needs 'role' and 'content'.", param="messages")
        messages.append(NewMessage(**{k: m.get(k) for k in _IMPORTED}))
    title = tree.get("title")
    return title, messages


def openai_messages(path: list[ConversationMessage]) -> list[dict[str, str]]:
    """A branch (root .. leaf) as OpenAI chat messages, ready for /v1/chat/completions or a fine-tune file."""
    return [{"role": m.role, "content": m.content} for m in path]


def shared_page(title: str, messages: list[ConversationMessage]) -> str:
    """What a share link shows in a browser: the messages as plain, escaped HTML (no script, no form)."""
    rows = "".join(
        f'<div class="m {html.escape(m.role)}"><b>{html.escape(m.role)}'
        f"{' · ' + html.escape(m.stage) if m.stage else ''}</b><p>{html.escape(m.content)}</p></div>"
        for m in messages
        if not m.deleted
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:48em;margin:2em auto}.m{border-radius:6px;padding:.2em .8em;"
        "margin:.6em 0;background:#f4f4f4}.assistant{background:#eef4ff}p{white-space:pre-wrap}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p><i>A shared stagechat conversation (read only).</i></p>"
        f"{rows}</body></html>"
    )


# -- saving a generated turn ----------------------------------------------------------------------------


def answer_message(gen: Generation, *, id: str | None = None, meta: dict[str, Any] | None = None) -> NewMessage:
    """A finished generation's (first) answer as a message: its stage, its decoding settings, the speculation
    figures the API shows (not vLLM's per-step pairs), its reward score and the logged generation's id."""
    choice = gen.choices[0]
    return NewMessage(
        "assistant",
        choice.text,
        stage=gen.stage,
        sampling=json.loads(json.dumps(asdict(gen.settings))),  # JSON-ready: tuples (stop strings) as lists
        speculative=speculative_body(choice.speculative),
        reward_score=choice.reward.score if choice.reward else None,
        generation_id=gen.id,
        meta=meta,
        id=id,
    )


def save_turn(
    store: Store, who: Caller, history: Sequence[ConversationMessage], new: Sequence[NewMessage]
) -> tuple[str, list[ConversationMessage]]:
    """Write a turn's messages (its input, then its answer) as a chain under the branch `history` ends —
    in the same conversation, a branch when that leaf has a child already — or, with no history, as a new
    conversation owned by the caller. One transaction (blocking: call it in a worker thread). Returns the
    conversation's id and the messages written. A leaf deleted meanwhile, or not the caller's, is the
    store's refusal (`StoreError`), nothing written."""
    if history:
        leaf = history[-1]
        return leaf.conversation_id, store.add_messages(leaf.conversation_id, leaf.id, new, viewer=who.viewer)
    conversation, written = store.create_conversation(owner=who.owner, messages=new)
    return conversation.id, written
