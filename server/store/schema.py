"""The store's schema: the SQLAlchemy tables, how a row reads as a plain record, and the Alembic
upgrade that creates them.

What it knows: tables, columns, constraints (the migrations in `server/migrations/versions` create
exactly these; a test compares them), that every datetime is aware UTC on every backend, and which
row class holds each kind of item a rater owns (`ROWS`).

What it does not know: how engines are made (`server/store/engine.py`), sessions and queries (the
store's mixins), or what a valid rating is.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from server.store.records import (
    Conversation,
    ConversationMessage,
    Correction,
    Feedback,
    GenerationRecord,
    Preference,
    Ranking,
    Share,
)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_SCHEMA_LOCK = 0x5354_4147  # PostgreSQL advisory-lock key held while upgrading the schema


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores them naive and would hand back naive ones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class GenerationRow(Base):
    __tablename__ = "generations"

    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    stage: Mapped[str] = mapped_column(sa.String(255), index=True)
    client_id: Mapped[str] = mapped_column(sa.String(64))
    kind: Mapped[str] = mapped_column(sa.String(16))
    prompt_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    messages: Mapped[list | None] = mapped_column(sa.JSON)
    prompt: Mapped[str | None] = mapped_column(sa.Text)
    completion: Mapped[str | None] = mapped_column(sa.Text)
    sampling: Mapped[dict] = mapped_column(sa.JSON)
    speculative_method: Mapped[str | None] = mapped_column(sa.String(64))
    speculative: Mapped[dict | None] = mapped_column(sa.JSON)
    prompt_tokens: Mapped[int] = mapped_column(sa.Integer)
    completion_tokens: Mapped[int] = mapped_column(sa.Integer)
    finish_reason: Mapped[str | None] = mapped_column(sa.String(32))
    ttft_ms: Mapped[float | None] = mapped_column(sa.Float)
    duration_ms: Mapped[float] = mapped_column(sa.Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    reward_model: Mapped[str | None] = mapped_column(sa.String(255))
    reward_score: Mapped[float | None] = mapped_column(sa.Float)


class FeedbackRow(Base):
    __tablename__ = "feedback"
    __table_args__ = (sa.UniqueConstraint("response_id", "rater", name="uq_feedback_response_rater"),)

    # `seq` orders lists and backs the `after` cursor; `id` is what clients see.
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    response_id: Mapped[str] = mapped_column(sa.ForeignKey("generations.id"), index=True)
    rater: Mapped[str] = mapped_column(sa.String(64))
    rating: Mapped[str] = mapped_column(sa.String(8))
    comment: Mapped[str | None] = mapped_column(sa.Text)
    tags: Mapped[list] = mapped_column(sa.JSON)
    prompt: Mapped[Any] = mapped_column(sa.JSON, nullable=True)  # messages (chat) or text (completion), when sent
    completion: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class PreferenceRow(Base):
    __tablename__ = "preferences"
    __table_args__ = (sa.UniqueConstraint("response_a", "response_b", "rater", name="uq_preference_pair_rater"),)

    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # Stored with response_a < response_b, so [A, B] and [B, A] are one preference.
    response_a: Mapped[str] = mapped_column(sa.ForeignKey("generations.id"))
    response_b: Mapped[str] = mapped_column(sa.ForeignKey("generations.id"))
    choice: Mapped[str] = mapped_column(sa.String(16))
    rater: Mapped[str] = mapped_column(sa.String(64))
    prompt_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    prompt: Mapped[Any] = mapped_column(sa.JSON, nullable=True)  # sent text, when prompt logging is off
    completion_a: Mapped[str | None] = mapped_column(sa.Text)
    completion_b: Mapped[str | None] = mapped_column(sa.Text)
    comment: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class RankingRow(Base):
    __tablename__ = "rankings"
    __table_args__ = (sa.UniqueConstraint("set_key", "rater", name="uq_ranking_set_rater"),)

    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    rater: Mapped[str] = mapped_column(sa.String(64))
    # sha256 of the sorted response ids: one ranking per set of answers and rater (re-ranking replaces it).
    set_key: Mapped[str] = mapped_column(sa.String(64))
    prompt_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    response_ids: Mapped[list] = mapped_column(sa.JSON)  # as the caller listed them
    ranking: Mapped[list] = mapped_column(sa.JSON)  # groups of response ids, best first
    stages: Mapped[list] = mapped_column(sa.JSON)  # stage of each response id, in order
    prompt: Mapped[Any] = mapped_column(sa.JSON, nullable=True)  # sent text, when prompt logging is off
    completions: Mapped[list | None] = mapped_column(sa.JSON, nullable=True)  # likewise, in response_ids order
    comment: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class CorrectionRow(Base):
    __tablename__ = "corrections"
    __table_args__ = (sa.UniqueConstraint("response_id", "rater", name="uq_correction_response_rater"),)

    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    response_id: Mapped[str] = mapped_column(sa.ForeignKey("generations.id"), index=True)
    rater: Mapped[str] = mapped_column(sa.String(64))
    completion: Mapped[str] = mapped_column(sa.Text)  # the corrected answer
    prompt: Mapped[Any] = mapped_column(sa.JSON, nullable=True)  # sent text, when prompt logging is off
    original: Mapped[str | None] = mapped_column(sa.Text)  # likewise: the answer as given
    comment: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


# -- the blind arena (migration 0005; server/store/arena.py) -----------------------------------


class BattleRow(Base):
    __tablename__ = "arena_battles"

    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(64), unique=True)  # secrets.token_urlsafe: unguessable
    rater: Mapped[str] = mapped_column(sa.String(64), index=True)
    stage_a: Mapped[str] = mapped_column(sa.String(255))
    stage_b: Mapped[str] = mapped_column(sa.String(255))
    status: Mapped[str] = mapped_column(sa.String(16))
    messages: Mapped[list] = mapped_column(sa.JSON)
    settings: Mapped[dict] = mapped_column(sa.JSON)
    turns: Mapped[list] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    campaign_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    # one battle per (campaign item, rater); NULLs (battles outside campaigns) never collide
    item_id: Mapped[str | None] = mapped_column(sa.String(64))
    gold: Mapped[str | None] = mapped_column(sa.String(1))  # a gold question's right side

    __table_args__ = (sa.UniqueConstraint("item_id", "rater", name="uq_arena_battle_item_rater"),)


class CampaignRow(Base):
    __tablename__ = "arena_campaigns"

    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    guidelines: Mapped[str] = mapped_column(sa.Text)
    overlap: Mapped[int] = mapped_column(sa.Integer)
    stages: Mapped[list | None] = mapped_column(sa.JSON, nullable=True)
    settings: Mapped[dict] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CampaignItemRow(Base):
    __tablename__ = "arena_campaign_items"
    __table_args__ = (sa.UniqueConstraint("campaign_id", "position", name="uq_campaign_item_position"),)

    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    campaign_id: Mapped[str] = mapped_column(sa.ForeignKey("arena_campaigns.id"))
    position: Mapped[int] = mapped_column(sa.Integer)
    messages: Mapped[list] = mapped_column(sa.JSON)
    gold_right: Mapped[str | None] = mapped_column(sa.Text)
    gold_wrong: Mapped[str | None] = mapped_column(sa.Text)
    stage_x: Mapped[str | None] = mapped_column(sa.String(255))
    stage_y: Mapped[str | None] = mapped_column(sa.String(255))
    answer_x: Mapped[dict | None] = mapped_column(sa.JSON, nullable=True)
    answer_y: Mapped[dict | None] = mapped_column(sa.JSON, nullable=True)


class ArenaVoteRow(Base):
    __tablename__ = "arena_votes"

    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # unique: one vote per battle, even when two arrive at once
    battle_id: Mapped[str] = mapped_column(sa.ForeignKey("arena_battles.id"), unique=True)
    rater: Mapped[str] = mapped_column(sa.String(64), index=True)
    winner: Mapped[str] = mapped_column(sa.String(16))
    stage_a: Mapped[str] = mapped_column(sa.String(255))  # the side each stage was on
    stage_b: Mapped[str] = mapped_column(sa.String(255))
    response_a: Mapped[str] = mapped_column(sa.String(255))
    response_b: Mapped[str] = mapped_column(sa.String(255))
    reasons: Mapped[list] = mapped_column(sa.JSON)
    comment: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


ROWS: dict[str, type[Base]] = {
    "feedback": FeedbackRow,
    "preference": PreferenceRow,
    "ranking": RankingRow,
    "correction": CorrectionRow,
}


# -- rows as plain records ----------------------------------------------------------------------


def generation_record(row: GenerationRow) -> GenerationRecord:
    return GenerationRecord(**{f: getattr(row, f) for f in GenerationRecord.__dataclass_fields__})


def feedback_record(row: FeedbackRow, stage: str) -> Feedback:
    return Feedback(
        id=row.id,
        response_id=row.response_id,
        stage=stage,
        rater=row.rater,
        rating=row.rating,  # type: ignore[arg-type]
        comment=row.comment,
        tags=list(row.tags or []),
        prompt=row.prompt,
        completion=row.completion,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def preference_record(row: PreferenceRow, stage_a: str, stage_b: str) -> Preference:
    return Preference(
        id=row.id,
        response_ids=(row.response_a, row.response_b),
        choice=row.choice,  # type: ignore[arg-type]
        rater=row.rater,
        stage_a=stage_a,
        stage_b=stage_b,
        comment=row.comment,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def ranking_record(row: RankingRow) -> Ranking:
    return Ranking(
        id=row.id,
        response_ids=list(row.response_ids),
        ranking=[list(g) for g in row.ranking],
        stages=list(row.stages),
        rater=row.rater,
        comment=row.comment,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def correction_record(row: CorrectionRow, stage: str) -> Correction:
    return Correction(
        id=row.id,
        response_id=row.response_id,
        stage=stage,
        rater=row.rater,
        completion=row.completion,
        comment=row.comment,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


# -- the migrations -----------------------------------------------------------------------------


def upgrade_schema(engine: Engine) -> None:
    """`alembic upgrade head` on this engine, with the migrations shipped in the package."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Two processes may start on a fresh database at once (server + `stagechat feedback export`):
    # take the database's write lock first, so the second waits and then finds the schema at head.
    with engine.execution_options(sqlite_begin="IMMEDIATE").begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


# -- conversations (migration 0004; server/store/conversations.py) ------------------------------


class ConversationRow(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # unguessable: it is the only key
    owner: Mapped[str | None] = mapped_column(sa.String(64), index=True)  # client id; None without API keys
    title: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class MessageRow(Base):
    __tablename__ = "conversation_messages"

    # `seq` orders siblings (branches) as they were made; `id` is what clients see.
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    conversation_id: Mapped[str] = mapped_column(sa.ForeignKey("conversations.id"), index=True)
    parent_id: Mapped[str | None] = mapped_column(sa.ForeignKey("conversation_messages.id"), index=True)
    role: Mapped[str] = mapped_column(sa.String(16))
    content: Mapped[str] = mapped_column(sa.Text)
    stage: Mapped[str | None] = mapped_column(sa.String(255))
    sampling: Mapped[dict | None] = mapped_column(sa.JSON)
    speculative: Mapped[dict | None] = mapped_column(sa.JSON)
    reward_score: Mapped[float | None] = mapped_column(sa.Float)
    # No foreign key: an answer is saved even when its log entry failed to be written (the log never fails one).
    generation_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    meta: Mapped[dict | None] = mapped_column(sa.JSON)
    deleted: Mapped[bool] = mapped_column(sa.Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ShareRow(Base):
    __tablename__ = "conversation_shares"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # unguessable: it is the link
    conversation_id: Mapped[str] = mapped_column(sa.ForeignKey("conversations.id"), index=True)
    message_id: Mapped[str | None] = mapped_column(sa.ForeignKey("conversation_messages.id"))  # a branch's leaf
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


def conversation_record(row: ConversationRow) -> Conversation:
    return Conversation(
        id=row.id, owner=row.owner, title=row.title, created_at=row.created_at, updated_at=row.updated_at
    )


def message_record(row: MessageRow) -> ConversationMessage:
    return ConversationMessage(**{f: getattr(row, f) for f in ConversationMessage.__dataclass_fields__})


def share_record(row: ShareRow) -> Share:
    return Share(id=row.id, conversation_id=row.conversation_id, message_id=row.message_id, created_at=row.created_at)


# -- reward scores of judged answers (migration 0006; server/store/reward_scores.py) -------------


class RewardScoreRow(Base):
    """A reward model's score of one logged answer, kept so the leaderboard's reward-agreement figures
    read scores instead of rescoring every answer on every request."""

    __tablename__ = "reward_scores"

    # No foreign key: an answer's log entry may be deleted (a rater's data) and its score with it later.
    generation_id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    reward_model: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    checkpoint: Mapped[str] = mapped_column(sa.Text)  # what served the name then: a changed one is rescored
    score: Mapped[float | None] = mapped_column(sa.Float)
    error: Mapped[str | None] = mapped_column(sa.Text)  # why there is no score (too long for its context)
    scored_at: Mapped[datetime] = mapped_column(UTCDateTime)
