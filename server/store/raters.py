"""A rater's data in the store: everything one rater gave, read as one JSON-ready document and deleted
in one transaction; and which raters fall below a gold-accuracy threshold (the leaderboard and every
export leave them out).

What it knows: which rows belong to a rater — the generation log's requests (`client_id`), ratings,
preferences, rankings, corrections (`rater`), arena battles and votes, campaign battles and gold
answers included (`rater`), and the saved conversations their key owns (`owner`, with their messages
and share links; without API keys conversations have no owner and are nobody's alone). A logged
answer of the rater that someone else's rating, ranking, vote, campaign item or conversation still
points at is kept (their data would lose its text otherwise) and counted as kept.

What it does not know: who may ask (`server/routes/raters.py`), HTTP, or the gold questions' rules
(`gold_accuracy` in `arena_campaigns.py` counts them).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from server.store.base import StoreBase
from server.store.records import utcnow
from server.store.schema import (
    ArenaVoteRow,
    BattleRow,
    CampaignItemRow,
    ConversationRow,
    CorrectionRow,
    FeedbackRow,
    GenerationRow,
    MessageRow,
    PreferenceRow,
    RankingRow,
    RewardScoreRow,
    ShareRow,
)

# Document section -> (row class, the column naming the rater), in the order they are written out.
OWNED: dict[str, tuple[Any, str]] = {
    "generations": (GenerationRow, "client_id"),
    "feedback": (FeedbackRow, "rater"),
    "preferences": (PreferenceRow, "rater"),
    "rankings": (RankingRow, "rater"),
    "corrections": (CorrectionRow, "rater"),
    "arena_battles": (BattleRow, "rater"),
    "arena_votes": (ArenaVoteRow, "rater"),
    "conversations": (ConversationRow, "owner"),
}
CHUNK = 500  # ids per IN (...) list: well under SQLite's and PostgreSQL's parameter limits


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _row_dict(row: Any) -> dict[str, Any]:
    """Every column of a row, JSON-ready (datetimes as ISO 8601 UTC)."""
    return {c.key: _plain(getattr(row, c.key)) for c in row.__table__.columns}


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


class RaterData(StoreBase):
    """The store's per-rater methods (a mixin of `Store`)."""

    def gold_excluded(self, threshold: float | None) -> list[str]:
        """Raters whose accuracy on gold questions is below `threshold` (raters who answered none stay in)."""
        if threshold is None:
            return []
        accuracy = self.gold_accuracy()  # type: ignore[attr-defined]  # CampaignStore's, joined in Store
        return sorted(r for r, (right, voted) in accuracy.items() if voted and right / voted < threshold)

    def rater_data(self, rater: str) -> dict[str, Any]:
        """Everything `rater` gave, one section per table (every column of each row), their owned
        conversations with `messages` and `shares` inside, and `counts` per section. Read from one
        snapshot, so the sections agree with each other."""
        doc: dict[str, Any] = {"object": "rater.data", "rater": rater, "exported_at": utcnow().isoformat()}
        with self._read() as session:
            # One snapshot for every section: PostgreSQL's default (read committed) gives each statement
            # its own; SQLite's read transaction is one snapshot already.
            postgres = self.engine.dialect.name == "postgresql"
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"} if postgres else {})
            for section, (model, column) in OWNED.items():
                rows = session.scalars(
                    sa.select(model).where(getattr(model, column) == rater).order_by(*model.__table__.primary_key)
                ).all()
                doc[section] = [_row_dict(r) for r in rows]
            # Two statements for all their conversations, not two per conversation.
            owned = sa.select(ConversationRow.id).where(ConversationRow.owner == rater)
            messages = session.scalars(
                sa.select(MessageRow).where(MessageRow.conversation_id.in_(owned)).order_by(MessageRow.seq)
            )
            shares = session.scalars(
                sa.select(ShareRow).where(ShareRow.conversation_id.in_(owned)).order_by(ShareRow.created_at)
            )
            by_id = {c["id"]: {**c, "messages": [], "shares": []} for c in doc["conversations"]}
            for m in messages:
                by_id[m.conversation_id]["messages"].append(_row_dict(m))
            for share in shares:
                by_id[share.conversation_id]["shares"].append(_row_dict(share))
            doc["conversations"] = list(by_id.values())
        doc["counts"] = {section: len(doc[section]) for section in OWNED}
        doc["counts"]["conversation_messages"] = sum(len(c["messages"]) for c in doc["conversations"])
        return doc

    def delete_rater_data(self, rater: str) -> dict[str, int]:
        """Delete everything `rater` gave, all or nothing (one transaction); rows deleted per table, and
        `generations_kept`: their logged answers that others' data still points at. Returns once
        committed."""
        deleted: dict[str, int] = {}
        with self._writing() as session:
            # Lock the rater's log rows first (PostgreSQL): a rating of one of them that arrives meanwhile
            # waits for this transaction, so the references read below stay true until the commit.
            own = list(
                session.scalars(
                    sa.select(GenerationRow.id).where(GenerationRow.client_id == rater).with_for_update()
                ).all()
            )
            conversations = sa.select(ConversationRow.id).where(ConversationRow.owner == rater)
            deleted["conversation_shares"] = _delete(session, ShareRow, ShareRow.conversation_id.in_(conversations))
            # All of a conversation's messages in one statement: a parent and its children go together.
            deleted["conversation_messages"] = _delete(
                session, MessageRow, MessageRow.conversation_id.in_(conversations)
            )
            deleted["conversations"] = _delete(session, ConversationRow, ConversationRow.owner == rater)
            deleted["arena_votes"] = _delete(session, ArenaVoteRow, ArenaVoteRow.rater == rater)
            deleted["arena_battles"] = _delete(session, BattleRow, BattleRow.rater == rater)
            for section in ("feedback", "preferences", "rankings", "corrections"):
                model, _ = OWNED[section]
                deleted[section] = _delete(session, model, model.rater == rater)
            kept = _still_referenced(session, own)
            gone = [g for g in own if g not in kept]
            deleted["generations"] = sum(
                _delete(session, GenerationRow, GenerationRow.id.in_(chunk)) for chunk in _chunks(gone)
            )
            # The reward-score cache of those answers (no foreign key: see RewardScoreRow) goes with them.
            deleted["reward_scores"] = sum(
                _delete(session, RewardScoreRow, RewardScoreRow.generation_id.in_(chunk)) for chunk in _chunks(gone)
            )
            deleted["generations_kept"] = len(kept)
        return deleted


def _delete(session: Session, model: Any, condition: Any) -> int:
    return session.execute(sa.delete(model).where(condition)).rowcount or 0


def _still_referenced(session: Session, ids: list[str]) -> set[str]:
    """Which of these logged answers others' remaining data points at (after the rater's own is gone)."""
    wanted, found = set(ids), set()
    if not wanted:
        return found
    for chunk in _chunks(ids):
        for column in (
            FeedbackRow.response_id,
            CorrectionRow.response_id,
            PreferenceRow.response_a,
            PreferenceRow.response_b,
            ArenaVoteRow.response_a,
            ArenaVoteRow.response_b,
            MessageRow.generation_id,
        ):
            found.update(session.scalars(sa.select(column).where(column.in_(chunk)).distinct()))
    # Ids inside JSON (rankings' lists, campaign items' answers): read in Python, the same on every backend.
    for (response_ids,) in session.execute(sa.select(RankingRow.response_ids).execution_options(yield_per=1000)):
        found.update(wanted.intersection(response_ids or ()))
    items = sa.select(CampaignItemRow.answer_x, CampaignItemRow.answer_y).where(CampaignItemRow.answer_x.is_not(None))
    for answer_x, answer_y in session.execute(items):
        found.update(a["response_id"] for a in (answer_x, answer_y) if a and a.get("response_id") in wanted)
    return found
