"""Saved conversations: trees of messages, their owners, and read-only share links.

What it knows: a conversation is a tree (a message's parent is an earlier message of the same
conversation; a parent with two children is a branch, made by an edit or a regeneration); who may see
one (`viewer`: a client id sees only the conversations it owns, `None` sees all — the admin, or a
server without API keys); that ids are unguessable (`secrets.token_urlsafe`), since a share id is all
a reader needs; that a deleted message stays in the tree as a tombstone so a chain through it fails
clearly (`message_path`); and what a well-formed tree is on import (every parent present, no cycle).
Every write is one transaction: a refused one (`InvalidConversation`, `UnknownConversation`) writes
nothing. A conversation that is not the viewer's reads as unknown, so nothing tells a foreign id from
a wrong one.

What it does not know: how answers are produced or how front doors render conversations (the
Responses API, the Conversations API, the UI), or HTTP.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from server.store.base import StoreBase
from server.store.records import (
    MESSAGE_ROLES,
    Conversation,
    ConversationMessage,
    InvalidConversation,
    NewMessage,
    Share,
    UnknownConversation,
    utcnow,
)
from server.store.schema import (
    ConversationRow,
    FeedbackRow,
    MessageRow,
    ShareRow,
    conversation_record,
    message_record,
    share_record,
)

MAX_TITLE = 255
MAX_IMPORTED_MESSAGES = 10_000
MAX_LISTED = 100


def new_id(prefix: str) -> str:
    """An unguessable id: 128 random bits."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def default_title(messages: Sequence[NewMessage]) -> str:
    """The first user message's first line, shortened: what a sidebar shows before a rename."""
    for m in messages:
        if m.role == "user" and isinstance(m.content, str) and m.content.strip():
            line = m.content.strip().splitlines()[0]
            return line if len(line) <= 60 else line[:59] + "…"
    return "New conversation"


class Conversations(StoreBase):
    """The store's conversation methods (a mixin of `Store`)."""

    # -- conversations -----------------------------------------------------------------------------

    def create_conversation(
        self, *, owner: str | None, title: str | None = None, messages: Sequence[NewMessage] = ()
    ) -> tuple[Conversation, list[ConversationMessage]]:
        """A new conversation, with `messages` as its first chain (each the child of the one before)."""
        title = _title(title) if title is not None else default_title(messages)
        now = utcnow()
        with self._writing() as session:
            row = ConversationRow(id=new_id("conv"), owner=owner, title=title, created_at=now, updated_at=now)
            session.add(row)
            session.flush()
            written = _chain(session, row.id, None, messages, now)
            return conversation_record(row), written

    def get_conversation(self, conversation_id: str, *, viewer: str | None) -> Conversation:
        with self._read() as session:
            return conversation_record(_conversation(session, conversation_id, viewer))

    def list_conversations(
        self, *, viewer: str | None, query: str | None = None, limit: int = 50
    ) -> tuple[list[Conversation], bool]:
        """The viewer's conversations, most recently updated first; `query` matches (case-insensitively)
        the title or any message's text. Returns the page and whether more follow."""
        limit = max(1, min(limit, MAX_LISTED))
        select = sa.select(ConversationRow).order_by(ConversationRow.updated_at.desc(), ConversationRow.id)
        if viewer is not None:
            select = select.where(ConversationRow.owner == viewer)
        if query:
            needle = query.lower()
            in_text = sa.select(MessageRow.conversation_id).where(
                sa.func.lower(MessageRow.content).contains(needle, autoescape=True)
            )
            select = select.where(
                sa.or_(
                    sa.func.lower(ConversationRow.title).contains(needle, autoescape=True),
                    ConversationRow.id.in_(in_text),
                )
            )
        with self._read() as session:
            rows = session.scalars(select.limit(limit + 1)).all()
        return [conversation_record(r) for r in rows[:limit]], len(rows) > limit

    def rename_conversation(self, conversation_id: str, title: str, *, viewer: str | None) -> Conversation:
        title = _title(title)
        with self._writing() as session:
            row = _conversation(session, conversation_id, viewer)
            row.title, row.updated_at = title, utcnow()
            return conversation_record(row)

    def delete_conversation(self, conversation_id: str, *, viewer: str | None) -> None:
        """The conversation, all its messages and its share links."""
        with self._writing() as session:
            _conversation(session, conversation_id, viewer)
            session.execute(sa.delete(ShareRow).where(ShareRow.conversation_id == conversation_id))
            # Children before parents would be needed row by row; one statement is checked as a whole.
            session.execute(sa.delete(MessageRow).where(MessageRow.conversation_id == conversation_id))
            session.execute(sa.delete(ConversationRow).where(ConversationRow.id == conversation_id))

    # -- messages ------------------------------------------------------------------------------------

    def conversation_messages(self, conversation_id: str, *, viewer: str | None) -> list[ConversationMessage]:
        """The whole tree, in the order its messages were written (a parent always before its children)."""
        with self._read() as session:
            _conversation(session, conversation_id, viewer)
            return [message_record(r) for r in _tree(session, conversation_id)]

    def add_messages(
        self, conversation_id: str, parent_id: str | None, messages: Sequence[NewMessage], *, viewer: str | None
    ) -> list[ConversationMessage]:
        """Append `messages` as a chain under `parent_id` (None: a new root). A parent that already has
        a child gets a second one: a branch."""
        now = utcnow()
        with self._writing() as session:
            row = _conversation(session, conversation_id, viewer)
            if parent_id is not None:
                parent = session.scalars(sa.select(MessageRow).where(MessageRow.id == parent_id)).one_or_none()
                if parent is None or parent.conversation_id != conversation_id:
                    raise InvalidConversation(
                        f"No message {parent_id!r} in conversation {conversation_id!r}.", "parent_id"
                    )
                if parent.deleted:
                    raise InvalidConversation(f"Message {parent_id!r} was deleted.", "parent_id")
            written = _chain(session, conversation_id, parent_id, messages, now)
            row.updated_at = now
            return written

    def get_message(self, message_id: str, *, viewer: str | None, param: str = "message_id") -> ConversationMessage:
        with self._read() as session:
            return message_record(_message(session, message_id, viewer, param))

    def message_path(
        self, message_id: str, *, viewer: str | None, param: str = "message_id"
    ) -> list[ConversationMessage]:
        """The branch that ends at `message_id`: its messages from the root down. A deleted message on
        the way is an `InvalidConversation` naming it (the chain is broken), not a silent gap."""
        with self._read() as session:
            leaf = _message(session, message_id, viewer, param)
            if leaf.deleted:
                raise UnknownConversation(f"Message {message_id!r} was deleted.", param)
            path = _path(session, leaf)
        broken = [m.id for m in path if m.deleted]
        if broken:
            raise InvalidConversation(
                f"The conversation up to {message_id!r} passes through deleted message "
                f"{broken[-1]!r}: it can no longer be continued or read whole.",
                param,
            )
        return path

    def delete_message(self, message_id: str, *, viewer: str | None, param: str = "message_id") -> None:
        """Blank one message and mark it deleted; it keeps its place, so its descendants stay in the tree
        but chains through it are refused (`message_path`)."""
        with self._writing() as session:
            row = _message(session, message_id, viewer, param)
            if row.deleted:
                raise UnknownConversation(f"Message {message_id!r} was deleted.", param)
            row.deleted, row.content, row.meta, row.sampling, row.speculative = True, "", None, None, None

    def message_ratings(self, messages: Sequence[ConversationMessage]) -> dict[str, list[tuple[str, str]]]:
        """The thumbs given to these messages' answers, by message id: (rater, "up"/"down") pairs. A rating
        is of a logged answer (its generation id), so it points at its message in its conversation."""
        by_generation = {m.generation_id: m.id for m in messages if m.generation_id}
        if not by_generation:
            return {}
        ratings: dict[str, list[tuple[str, str]]] = {}
        with self._read() as session:
            rows = session.execute(
                sa.select(FeedbackRow.response_id, FeedbackRow.rater, FeedbackRow.rating)
                .where(FeedbackRow.response_id.in_(list(by_generation)))
                .order_by(FeedbackRow.seq)
            )
            for response_id, rater, rating in rows:
                ratings.setdefault(by_generation[response_id], []).append((rater, rating))
        return ratings

    # -- import ----------------------------------------------------------------------------------------

    def import_conversation(
        self, *, owner: str | None, title: str | None, messages: Sequence[NewMessage]
    ) -> tuple[Conversation, list[ConversationMessage]]:
        """A conversation from an exported tree: `messages` carry their own `id`/`parent_id`, which must
        make a tree (ids unique, every parent among them, no cycle). Fresh ids are given on the way in,
        so importing twice makes two conversations. A malformed tree writes nothing."""
        ordered = _tree_order(messages)
        title = _title(title) if title is not None else default_title(ordered)
        now = utcnow()
        with self._writing() as session:
            row = ConversationRow(id=new_id("conv"), owner=owner, title=title, created_at=now, updated_at=now)
            session.add(row)
            session.flush()
            fresh: dict[str, str] = {}
            written = []
            for m in ordered:
                fresh[m.id] = new_id("msg")
                parent = fresh[m.parent_id] if m.parent_id is not None else None
                written += _chain(session, row.id, parent, [_with(m, id=fresh[m.id])], now)
            return conversation_record(row), written

    # -- share links -----------------------------------------------------------------------------------

    def share_conversation(self, conversation_id: str, message_id: str | None = None, *, viewer: str | None) -> Share:
        """A new read-only link to the conversation (or to the branch ending at `message_id`)."""
        with self._writing() as session:
            _conversation(session, conversation_id, viewer)
            if message_id is not None:
                m = session.scalars(sa.select(MessageRow).where(MessageRow.id == message_id)).one_or_none()
                if m is None or m.conversation_id != conversation_id:
                    raise InvalidConversation(
                        f"No message {message_id!r} in conversation {conversation_id!r}.", "message_id"
                    )
            row = ShareRow(
                id=new_id("shr"), conversation_id=conversation_id, message_id=message_id, created_at=utcnow()
            )
            session.add(row)
            session.flush()
            return share_record(row)

    def list_shares(self, conversation_id: str, *, viewer: str | None) -> list[Share]:
        with self._read() as session:
            _conversation(session, conversation_id, viewer)
            rows = session.scalars(
                sa.select(ShareRow)
                .where(ShareRow.conversation_id == conversation_id)
                .order_by(ShareRow.created_at, ShareRow.id)
            )
            return [share_record(r) for r in rows]

    def revoke_share(self, share_id: str, *, viewer: str | None) -> None:
        with self._writing() as session:
            row = session.get(ShareRow, share_id)
            if row is None:
                raise UnknownConversation(f"No share link {share_id!r}.", "share_id")
            _conversation(session, row.conversation_id, viewer, "share_id")
            session.delete(row)

    def shared(self, share_id: str) -> tuple[Share, Conversation, list[ConversationMessage]]:
        """What a share link shows (anyone may read it): the conversation, and its whole tree or the
        branch the link names."""
        with self._read() as session:
            row = session.get(ShareRow, share_id)
            if row is None:
                raise UnknownConversation(f"No share link {share_id!r} (it may have been revoked).", "share_id")
            conversation = _conversation(session, row.conversation_id, None, "share_id")
            if row.message_id is None:
                messages = [message_record(r) for r in _tree(session, row.conversation_id)]
            else:
                messages = _path(session, _message(session, row.message_id, None, "share_id"))
            return share_record(row), conversation_record(conversation), messages


# -- helpers -------------------------------------------------------------------------------------------


def _title(title: Any) -> str:
    if not isinstance(title, str) or not title.strip():
        raise InvalidConversation("'title' must be a non-empty string.", "title")
    if len(title) > MAX_TITLE:
        raise InvalidConversation(f"'title' is longer than {MAX_TITLE} characters.", "title")
    return title.strip()


def _conversation(
    session: Session, conversation_id: Any, viewer: str | None, param: str = "conversation_id"
) -> ConversationRow:
    row = session.get(ConversationRow, conversation_id) if isinstance(conversation_id, str) else None
    if row is None or (viewer is not None and row.owner != viewer):
        raise UnknownConversation(f"No conversation {conversation_id!r}.", param)
    return row


def _message(session: Session, message_id: Any, viewer: str | None, param: str = "message_id") -> MessageRow:
    row = None
    if isinstance(message_id, str):
        row = session.scalars(sa.select(MessageRow).where(MessageRow.id == message_id)).one_or_none()
    if row is not None:
        owner = session.scalar(sa.select(ConversationRow.owner).where(ConversationRow.id == row.conversation_id))
        if viewer is not None and owner != viewer:
            row = None
    if row is None:
        raise UnknownConversation(f"No message {message_id!r}.", param)
    return row


def _tree(session: Session, conversation_id: str) -> list[MessageRow]:
    return list(
        session.scalars(
            sa.select(MessageRow).where(MessageRow.conversation_id == conversation_id).order_by(MessageRow.seq)
        )
    )


def _path(session: Session, leaf: MessageRow) -> list[ConversationMessage]:
    """Root .. leaf, from one read of the conversation's (small) tree."""
    by_id = {r.id: r for r in _tree(session, leaf.conversation_id)}
    path, node = [], by_id[leaf.id]
    while node is not None:
        path.append(message_record(node))
        node = by_id.get(node.parent_id) if node.parent_id is not None else None
    return path[::-1]


def _checked(m: NewMessage, where: str) -> None:
    if not isinstance(m.role, str) or m.role not in MESSAGE_ROLES:
        raise InvalidConversation(
            f"{where}: 'role' must be one of {', '.join(MESSAGE_ROLES)}; got {m.role!r}.", "messages"
        )
    if not isinstance(m.content, str):
        raise InvalidConversation(f"{where}: 'content' must be a string.", "messages")
    for name in ("sampling", "speculative", "meta"):
        if getattr(m, name) is not None and not isinstance(getattr(m, name), dict):
            raise InvalidConversation(f"{where}: '{name}' must be an object.", "messages")
    if m.reward_score is not None and (
        isinstance(m.reward_score, bool) or not isinstance(m.reward_score, (int, float))
    ):
        raise InvalidConversation(f"{where}: 'reward_score' must be a number.", "messages")


def _chain(
    session: Session, conversation_id: str, parent_id: str | None, messages: Sequence[NewMessage], now
) -> list[ConversationMessage]:
    written = []
    for i, m in enumerate(messages):
        _checked(m, f"message {i}")
        row = MessageRow(
            id=m.id or new_id("msg"),
            conversation_id=conversation_id,
            parent_id=parent_id,
            role=m.role,
            content=m.content,
            stage=m.stage,
            sampling=m.sampling,
            speculative=m.speculative,
            reward_score=m.reward_score,
            generation_id=m.generation_id,
            meta=m.meta,
            deleted=False,
            created_at=now,
        )
        session.add(row)
        session.flush()  # in order: a child's parent must exist when it is inserted
        written.append(message_record(row))
        parent_id = row.id
    return written


def _with(m: NewMessage, **changes) -> NewMessage:
    from dataclasses import replace

    return replace(m, parent_id=None, **changes)


def _tree_order(messages: Sequence[NewMessage]) -> list[NewMessage]:
    """The messages parents first, or `InvalidConversation` when they do not make a tree."""
    if not messages:
        raise InvalidConversation("A conversation needs at least one message.", "messages")
    if len(messages) > MAX_IMPORTED_MESSAGES:
        raise InvalidConversation(f"At most {MAX_IMPORTED_MESSAGES} messages.", "messages")
    by_id: dict[str, NewMessage] = {}
    for i, m in enumerate(messages):
        if not isinstance(m.id, str) or not m.id:
            raise InvalidConversation(f"message {i}: 'id' must be a non-empty string.", "messages")
        if m.id in by_id:
            raise InvalidConversation(f"message {i}: id {m.id!r} appears twice.", "messages")
        if m.parent_id is not None and not isinstance(m.parent_id, str):
            raise InvalidConversation(f"message {i}: 'parent_id' must be a string or null.", "messages")
        _checked(m, f"message {i}")
        by_id[m.id] = m
    children: dict[str | None, list[NewMessage]] = {}
    for m in messages:
        if m.parent_id is not None and m.parent_id not in by_id:
            raise InvalidConversation(f"message {m.id!r}: parent {m.parent_id!r} is not in the tree.", "messages")
        children.setdefault(m.parent_id, []).append(m)
    ordered, todo = [], list(children.get(None, []))
    while todo:
        m = todo.pop(0)
        ordered.append(m)
        todo += children.get(m.id, [])
    if len(ordered) != len(messages):  # what is not reachable from a root hangs in a cycle
        raise InvalidConversation("The messages' parents make a cycle: not a tree.", "messages")
    return ordered
