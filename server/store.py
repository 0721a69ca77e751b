"""The store: the generation log, ratings, A/B preferences, rankings and corrections, in SQLite
(default) or PostgreSQL.

What it knows: which answer the server gave (`GenerationRecord`), who rated it up or down, which
of two answers to the same prompt a rater preferred, how a rater ranked K = 2..4 answers to one
conversation (ties allowed; an A/B preference reads as a ranking of two, see `iter_judgements`),
and what a rater corrected an answer into. The server, not the client, is the source of
truth for what was rated: a rating references a logged response id. When prompt logging is off the
log keeps only a hash of the prompt, so a rating must carry the text it rates, and that text must
hash to the logged prompt.

What it does not know: HTTP (it raises `UnknownResponse` / `InvalidFeedback`; the routes map them
to OpenAI errors), TRL's dataset formats (`server/export.py`), or how answers are produced.

The schema is owned by Alembic (`server/migrations/`); `Store(url)` upgrades it to head. Everything
is synchronous and thread-safe: each method opens its own session on a shared engine.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column, sessionmaker

Rating = Literal["up", "down"]
Choice = Literal["a", "b", "tie", "both_bad"]
RATINGS: tuple[str, ...] = ("up", "down")
CHOICES: tuple[str, ...] = ("a", "b", "tie", "both_bad")
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_SCHEMA_LOCK = 0x5354_4147  # PostgreSQL advisory-lock key held while upgrading the schema


MAX_RANKED = 4  # answers one ranking may order
KINDS: tuple[str, ...] = ("feedback", "preference", "ranking", "correction")  # what a rater owns


class StoreError(Exception):
    """Base of the store's errors; `param` names the offending request field, when there is one."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class UnknownResponse(StoreError, LookupError):
    """A response id the generation log has never seen."""


class InvalidFeedback(StoreError, ValueError):
    """A rating or preference the store refuses; nothing was written."""


class UnknownItem(StoreError, LookupError):
    """A rating, preference, ranking or correction id that does not exist (or is not the caller's)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def prompt_hash(prompt: Sequence[dict[str, Any]] | str) -> str:
    """sha256 of the canonical JSON of chat messages (or of a completion prompt's text).

    Canonical: sorted keys, json's default separators, UTF-8, so the same prompt always hashes the
    same. The serving layer must hash with this very function: ratings check sent prompts against it.
    """
    canonical = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Plain data that crosses the store's boundary


@dataclass
class GenerationRecord:
    """One answer the server gave; choice i > 0 of an `n > 1` request has id f"{id}:{i}"."""

    id: str
    stage: str
    client_id: str
    kind: Literal["chat", "completion"]
    prompt_hash: str
    messages: list[dict[str, Any]] | None  # chat prompt; None for completions or with logging off
    prompt: str | None  # completion prompt text; None for chat or with logging off
    completion: str | None  # None with prompt logging off
    sampling: dict[str, Any]
    speculative_method: str | None
    speculative: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    ttft_ms: float | None
    duration_ms: float
    created_at: datetime = field(default_factory=utcnow)
    reward_model: str | None = None  # the reward model that scored this answer, when one did
    reward_score: float | None = None


@dataclass
class Feedback:
    """A rating as stored: one per (response_id, rater); re-rating replaces it."""

    id: str
    response_id: str
    stage: str
    rater: str
    rating: Rating
    comment: str | None
    tags: list[str]
    prompt: list[dict[str, Any]] | str | None  # the rated text, when the log lacks it (prompt logging off)
    completion: str | None
    created_at: datetime
    updated_at: datetime


@dataclass
class Preference:
    """Which of two answers to the same prompt a rater preferred; one per (pair, rater)."""

    id: str
    response_ids: tuple[str, str]
    choice: Choice
    rater: str
    stage_a: str
    stage_b: str
    comment: str | None
    created_at: datetime
    updated_at: datetime


@dataclass
class RatedAnswer:
    """A rated chat answer with its text resolved (the rating's text, else the log's), for export."""

    response_id: str
    stage: str
    prompt_hash: str
    prompt: list[dict[str, Any]]
    completion: str
    label: bool  # True: thumbs up
    rated_at: datetime | None = None


@dataclass
class CorrectedAnswer:
    """A correction with its text resolved, for export: `corrected` is what `original` should have been."""

    response_id: str
    stage: str
    prompt_hash: str
    prompt: list[dict[str, Any]]
    original: str
    corrected: str
    rated_at: datetime | None = None


@dataclass
class PreferredPair:
    """A preference with a winner (choice a or b), text resolved, for export."""

    prompt_hash: str
    prompt: list[dict[str, Any]]
    chosen: str
    rejected: str
    source: str = "preference"  # or "ranking"
    stages: tuple[str, str] = ("", "")  # chosen's stage, rejected's stage
    rated_at: datetime | None = None


@dataclass
class Ranking:
    """How one rater ordered K = 2..4 answers to one conversation: groups best first, ties share a group."""

    id: str
    response_ids: list[str]
    ranking: list[list[str]]
    stages: list[str]  # the stage of each of `response_ids`, in order
    rater: str
    comment: str | None
    created_at: datetime
    updated_at: datetime


@dataclass
class Correction:
    """What one rater says an answer should have been; one per (response_id, rater)."""

    id: str
    response_id: str
    stage: str
    rater: str
    completion: str
    comment: str | None
    created_at: datetime
    updated_at: datetime


@dataclass
class Judgement:
    """A comparative verdict for the leaderboard: a preference (a ranking of two) or a ranking.

    `groups` holds indices into `response_ids`/`stages`, best group first; a tie (or "both bad")
    is one group of two."""

    id: str
    rater: str
    response_ids: list[str]
    stages: list[str]
    groups: list[list[int]]
    at: datetime


# ---------------------------------------------------------------------------------------------
# Schema (the migrations in server/migrations/versions create exactly this; a test compares them)


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
    __table_args__ = (
        sa.UniqueConstraint("response_a", "response_b", "rater", name="uq_preference_pair_rater"),
    )

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


_ROWS: dict[str, type[Base]] = {"feedback": FeedbackRow, "preference": PreferenceRow, "ranking": RankingRow,
                                 "correction": CorrectionRow}


# ---------------------------------------------------------------------------------------------
# Engine set-up


# How long a SQLite connection waits for another's write lock (or for its turn to switch to WAL).
BUSY_SECONDS = 30


def _sqlite_engine(url: str) -> Engine:
    # A file database needs its folder; ":memory:" would be one database per connection, so refuse it.
    database = sa.make_url(url).database
    if not database or database == ":memory:":
        raise ValueError("the store needs a SQLite file, not an in-memory database")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (below), so sqlite3 must not; see SQLAlchemy's pysqlite notes.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        # WAL lets readers (exports) run beside the writer; synchronous=FULL fsyncs the WAL on every
        # commit, so an acknowledged rating survives kill -9 and power loss.
        _set_wal(cursor, BUSY_SECONDS)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Writers take the write lock up front (BEGIN IMMEDIATE): a deferred transaction that reads
        # and then writes can fail with SQLITE_BUSY at once instead of waiting its turn.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _set_wal(cursor: Any, wait_seconds: float) -> None:
    """`PRAGMA journal_mode=WAL`, waiting its turn. On a database not yet in WAL mode (a fresh one)
    that another connection is writing to (a schema upgrade: two processes starting together),
    SQLite refuses the switch at once with "database is locked", without the busy timeout."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def create_store_engine(url: str) -> Engine:
    if sa.make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return sa.create_engine(url, pool_pre_ping=True)


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


# ---------------------------------------------------------------------------------------------
# The store


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _check_messages(messages: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages
    ):
        raise InvalidFeedback(f"'{param}' must be a non-empty list of {{role, content}} messages.", param)
    return messages


class Store:
    """Generation log + feedback over one SQLAlchemy engine. Safe to share between threads."""

    def __init__(self, url: str, *, upgrade: bool = True):
        self.url = url
        self.engine = create_store_engine(url)
        if upgrade:
            upgrade_schema(self.engine)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
        )

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._write() as session, session.begin():
            yield session

    # -- generation log ---------------------------------------------------------------------

    def record_generation(self, record: GenerationRecord) -> None:
        """Log one answer."""
        self.record_generations([record])

    def record_generations(self, records: Sequence[GenerationRecord]) -> None:
        """Log answers in one transaction: all or none. The serving layer group-commits through
        this (`server.generation_log`), from a worker thread."""
        if any(r.created_at.tzinfo is None for r in records):
            raise ValueError("GenerationRecord.created_at must be timezone-aware (UTC)")
        with self._writing() as session:
            # One bulk INSERT rather than ORM objects: 128 records took 4.3 ms of CPU instead of 10.0
            # (SQLite), CPU the event loop waiting for this commit shares through the GIL.
            session.execute(sa.insert(GenerationRow), [r.__dict__ for r in records])

    def get_generation(self, response_id: str) -> GenerationRecord | None:
        with self._read() as session:
            row = session.get(GenerationRow, response_id)
            return _generation(row) if row else None

    def iter_logged_prompts(self, *, stage: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Every distinct logged chat prompt (messages), oldest first: the prompts of an RL round."""
        query = (sa.select(GenerationRow.prompt_hash, GenerationRow.messages)
                 .where(GenerationRow.kind == "chat", GenerationRow.messages.is_not(None))
                 .order_by(GenerationRow.created_at, GenerationRow.id))
        if stage is not None:
            query = query.where(GenerationRow.stage == stage)
        seen: set[str] = set()
        with self._read() as session:
            for digest, messages in session.execute(query.execution_options(yield_per=500)):
                if digest not in seen:
                    seen.add(digest)
                    yield messages

    # -- ratings ----------------------------------------------------------------------------

    def rate(
        self,
        response_id: str,
        rating: str,
        *,
        rater: str,
        comment: str | None = None,
        tags: Sequence[str] = (),
        prompt: list[dict[str, Any]] | str | None = None,
        completion: str | None = None,
    ) -> Feedback:
        """Store `rater`'s rating of an answer, replacing their earlier one (idempotent).

        When the log lacks the answer's text (prompt logging off), `prompt` and `completion` are
        required; sent text must match the log (see `_text_for`).
        """
        if rating not in RATINGS:
            raise InvalidFeedback(f"'rating' must be one of {', '.join(RATINGS)}; got {rating!r}.", "rating")
        if not all(isinstance(t, str) for t in tags):
            raise InvalidFeedback("'tags' must be a list of strings.", "tags")
        now = utcnow()
        with self._writing() as session:
            generation = self._generation_row(session, response_id, "response_id")
            prompt, completion = _text_for(generation, prompt, completion)
            values = dict(rating=rating, comment=comment, tags=list(tags), prompt=prompt,
                          completion=completion, updated_at=now)
            insert = _insert(session)(FeedbackRow).values(
                id=_new_id("fb"), response_id=response_id, rater=rater, created_at=now, **values
            )
            # One statement, so two concurrent re-ratings cannot both insert.
            session.execute(insert.on_conflict_do_update(index_elements=["response_id", "rater"], set_=values))
            row = session.scalars(
                sa.select(FeedbackRow).where(FeedbackRow.response_id == response_id, FeedbackRow.rater == rater)
            ).one()
            return _feedback(row, generation.stage)

    def prefer(
        self,
        response_ids: Sequence[str],
        choice: str,
        *,
        rater: str,
        comment: str | None = None,
        prompt: list[dict[str, Any]] | str | None = None,
        completions: Sequence[str] | None = None,
    ) -> Preference:
        """Store which of two answers to the same prompt `rater` preferred, replacing their earlier say."""
        if len(response_ids) != 2:
            raise InvalidFeedback("'response_ids' must list exactly two response ids.", "response_ids")
        if response_ids[0] == response_ids[1]:
            raise InvalidFeedback("'response_ids' must name two different responses.", "response_ids")
        if choice not in CHOICES:
            raise InvalidFeedback(f"'choice' must be one of {', '.join(CHOICES)}; got {choice!r}.", "choice")
        if completions is not None and len(completions) != 2:
            raise InvalidFeedback("'completions' must hold the two answers' text, in order.", "completions")
        now = utcnow()
        with self._writing() as session:
            a, b = (self._generation_row(session, rid, "response_ids") for rid in response_ids)
            if a.prompt_hash != b.prompt_hash:
                raise InvalidFeedback("The two responses answer different prompts; a preference compares "
                                      "two answers to the same prompt.", "response_ids")
            text_a = _text_for(a, prompt, completions[0] if completions else None)
            text_b = _text_for(b, prompt, completions[1] if completions else None)
            if sorted(response_ids) != list(response_ids):  # store the pair in one canonical order
                a, b, text_a, text_b, choice = b, a, text_b, text_a, _flip(choice)
            values = dict(choice=choice, comment=comment, prompt=text_a[0] or text_b[0], completion_a=text_a[1],
                          completion_b=text_b[1], updated_at=now)
            insert = _insert(session)(PreferenceRow).values(
                id=_new_id("pref"), response_a=a.id, response_b=b.id, rater=rater,
                prompt_hash=a.prompt_hash, created_at=now, **values,
            )
            session.execute(insert.on_conflict_do_update(
                index_elements=["response_a", "response_b", "rater"], set_=values))
            row = session.scalars(sa.select(PreferenceRow).where(
                PreferenceRow.response_a == a.id, PreferenceRow.response_b == b.id, PreferenceRow.rater == rater,
            )).one()
            preference = _preference(row, a.stage, b.stage)
        if list(preference.response_ids) != list(response_ids):  # answer in the caller's order
            preference.response_ids = (preference.response_ids[1], preference.response_ids[0])
            preference.choice = _flip(preference.choice)  # type: ignore[assignment]
            preference.stage_a, preference.stage_b = preference.stage_b, preference.stage_a
        return preference

    def rank(
        self,
        response_ids: Sequence[str],
        ranking: Sequence[Sequence[str]],
        *,
        rater: str,
        comment: str | None = None,
        prompt: list[dict[str, Any]] | str | None = None,
        completions: Sequence[str] | None = None,
    ) -> Ranking:
        """Store `rater`'s ranking of 2..4 answers to one conversation, replacing their earlier one.

        `ranking` lists groups of ids, best first; ids in one group tie. Every id of `response_ids`
        appears exactly once. With prompt logging off, `prompt` and `completions` (in the order of
        `response_ids`) carry the text.
        """
        if not isinstance(response_ids, (list, tuple)) or not 2 <= len(response_ids) <= MAX_RANKED:
            raise InvalidFeedback(f"'response_ids' must list 2 to {MAX_RANKED} response ids.", "response_ids")
        ids = list(response_ids)
        if not all(isinstance(i, str) for i in ids):
            raise InvalidFeedback("'response_ids' must hold response id strings.", "response_ids")
        if len(set(ids)) != len(ids):
            raise InvalidFeedback("'response_ids' must name each response once.", "response_ids")
        groups = _check_ranking(ranking, ids)
        if completions is not None and (not isinstance(completions, (list, tuple)) or len(completions) != len(ids)):
            raise InvalidFeedback("'completions' must hold one text per response id, in order.", "completions")
        now = utcnow()
        with self._writing() as session:
            rows = [self._generation_row(session, rid, "response_ids") for rid in ids]
            if len({r.prompt_hash for r in rows}) != 1:
                raise InvalidFeedback("The responses answer different conversations; a ranking orders answers "
                                      "to one conversation (the same messages).", "response_ids")
            texts = [_text_for(r, prompt, completions[i] if completions else None) for i, r in enumerate(rows)]
            sent = [t[1] for t in texts]
            values = dict(response_ids=ids, ranking=groups, stages=[r.stage for r in rows],
                          prompt=next((t[0] for t in texts if t[0] is not None), None),
                          completions=sent if any(t is not None for t in sent) else None,
                          prompt_hash=rows[0].prompt_hash, comment=comment, updated_at=now)
            key = hashlib.sha256(json.dumps(sorted(ids)).encode()).hexdigest()
            insert = _insert(session)(RankingRow).values(
                id=_new_id("rank"), rater=rater, set_key=key, created_at=now, **values)
            session.execute(insert.on_conflict_do_update(index_elements=["set_key", "rater"], set_=values))
            row = session.scalars(sa.select(RankingRow).where(RankingRow.set_key == key,
                                                              RankingRow.rater == rater)).one()
            return _ranking(row)

    def correct(
        self,
        response_id: str,
        completion: str,
        *,
        rater: str,
        comment: str | None = None,
        prompt: list[dict[str, Any]] | str | None = None,
        original: str | None = None,
    ) -> Correction:
        """Store what `rater` says the answer should have been, replacing their earlier correction.

        Empty text, or text equal to the answer (ignoring surrounding whitespace), is refused. With
        prompt logging off, `prompt` and `original` (the answer as given) carry the text.
        """
        if not isinstance(completion, str) or not completion.strip():
            raise InvalidFeedback("'completion' must be the corrected answer; it is empty.", "completion")
        now = utcnow()
        with self._writing() as session:
            generation = self._generation_row(session, response_id, "response_id")
            sent_prompt, sent_original = _text_for(generation, prompt, original, completion_param="original")
            before = generation.completion if generation.completion is not None else sent_original
            if before is not None and completion.strip() == before.strip():
                raise InvalidFeedback("'completion' is the answer unchanged; a correction must change it.",
                                      "completion")
            values = dict(completion=completion, prompt=sent_prompt, original=sent_original, comment=comment,
                          updated_at=now)
            insert = _insert(session)(CorrectionRow).values(
                id=_new_id("corr"), response_id=response_id, rater=rater, created_at=now, **values)
            session.execute(insert.on_conflict_do_update(index_elements=["response_id", "rater"], set_=values))
            row = session.scalars(sa.select(CorrectionRow).where(
                CorrectionRow.response_id == response_id, CorrectionRow.rater == rater)).one()
            return _correction(row, generation.stage)

    def unrate(self, response_id: str, *, rater: str) -> bool:
        """Withdraw `rater`'s thumbs on an answer (the UI's un-like); True when there was one."""
        with self._writing() as session:
            result = session.execute(sa.delete(FeedbackRow).where(FeedbackRow.response_id == response_id,
                                                                  FeedbackRow.rater == rater))
            return result.rowcount > 0

    def delete(self, kind: str, item_id: str, *, rater: str | None = None) -> None:
        """Delete one rating, preference, ranking or correction by id; `rater` set: only if it is theirs.

        Someone else's item is reported as unknown, so ids of others' ratings reveal nothing."""
        model = _ROWS[kind]
        with self._writing() as session:
            query = sa.delete(model).where(model.id == item_id)
            if rater is not None:
                query = query.where(model.rater == rater)
            if session.execute(query).rowcount == 0:
                raise UnknownItem(f"No {kind} with id {item_id!r} of yours.", "id")

    def list_items(
        self,
        kind: str,
        *,
        rater: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> tuple[list[Any], bool]:
        """Preferences, rankings or corrections newest first, like `list_feedback`; (page, has_more)."""
        if kind == "feedback":
            return self.list_feedback(rater=rater, since=since, until=until, limit=limit, after=after)
        if not 1 <= limit <= 1000:
            raise InvalidFeedback("'limit' must be between 1 and 1000.", "limit")
        model: Any = _ROWS[kind]
        with self._read() as session:
            query = _newest_first_page(session, sa.select(model), model, kind, rater=rater, since=since,
                                       until=until, limit=limit, after=after)
            rows = session.scalars(query).all()
            page = [self._plain(session, kind, row) for row in rows[:limit]]
        return page, len(rows) > limit

    @staticmethod
    def _plain(session: Session, kind: str, row: Any) -> Any:
        def stage(response_id: str) -> str:
            return session.get(GenerationRow, response_id).stage  # type: ignore[union-attr]

        if kind == "preference":
            return _preference(row, stage(row.response_a), stage(row.response_b))
        if kind == "ranking":
            return _ranking(row)
        return _correction(row, stage(row.response_id))

    def list_feedback(
        self,
        *,
        stage: str | None = None,
        rating: str | None = None,
        rater: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> tuple[list[Feedback], bool]:
        """Ratings newest first (by when last rated), filtered; returns (page, has_more).

        `after` is the id of the last item of the previous page; `since`/`until` bound `updated_at`
        (inclusive, exclusive).
        """
        if rating is not None and rating not in RATINGS:
            raise InvalidFeedback(f"'rating' must be one of {', '.join(RATINGS)}; got {rating!r}.", "rating")
        if not 1 <= limit <= 1000:
            raise InvalidFeedback("'limit' must be between 1 and 1000.", "limit")
        query = sa.select(FeedbackRow, GenerationRow.stage).join(
            GenerationRow, GenerationRow.id == FeedbackRow.response_id)
        if stage is not None:
            query = query.where(GenerationRow.stage == stage)
        if rating is not None:
            query = query.where(FeedbackRow.rating == rating)
        with self._read() as session:
            query = _newest_first_page(session, query, FeedbackRow, "feedback", rater=rater, since=since,
                                       until=until, limit=limit, after=after)
            rows = session.execute(query).all()
        page = [_feedback(row, stage_) for row, stage_ in rows[:limit]]
        return page, len(rows) > limit

    # -- export inputs (formats live in server/export.py) -------------------------------------

    def iter_rated_answers(self, *, stage: str | None = None) -> Iterator[RatedAnswer]:
        """Every rating of a chat answer, with its text, grouped by prompt (ordered by prompt_hash).

        Completions-API answers (base-model prompts, no chat messages) are left out: the export
        formats are TRL's conversational ones.
        """
        query = (
            sa.select(FeedbackRow, GenerationRow)
            .join(GenerationRow, GenerationRow.id == FeedbackRow.response_id)
            .where(GenerationRow.kind == "chat")
            .order_by(GenerationRow.prompt_hash, FeedbackRow.seq)
        )
        if stage is not None:
            query = query.where(GenerationRow.stage == stage)
        with self._read() as session:
            for fb, gen in session.execute(query.execution_options(yield_per=500)):
                prompt = fb.prompt if fb.prompt is not None else gen.messages
                completion = fb.completion if fb.completion is not None else gen.completion
                if prompt is None or completion is None:
                    continue  # text never stored (cannot happen through `rate`)
                yield RatedAnswer(gen.id, gen.stage, gen.prompt_hash, prompt, completion, fb.rating == "up",
                                  rated_at=fb.updated_at)

    def iter_preferred_pairs(self, *, stage: str | None = None) -> Iterator[PreferredPair]:
        """Every preference with a winner (choice a or b) between two chat answers, with text."""
        gen_a, gen_b = aliased(GenerationRow), aliased(GenerationRow)
        query = (
            sa.select(PreferenceRow, gen_a, gen_b)
            .join(gen_a, gen_a.id == PreferenceRow.response_a)
            .join(gen_b, gen_b.id == PreferenceRow.response_b)
            .where(PreferenceRow.choice.in_(("a", "b")), gen_a.kind == "chat")
            .order_by(PreferenceRow.prompt_hash, PreferenceRow.seq)
        )
        if stage is not None:
            query = query.where(sa.or_(gen_a.stage == stage, gen_b.stage == stage))
        with self._read() as session:
            for pref, a, b in session.execute(query.execution_options(yield_per=500)):
                prompt = pref.prompt if pref.prompt is not None else a.messages
                text_a = pref.completion_a if pref.completion_a is not None else a.completion
                text_b = pref.completion_b if pref.completion_b is not None else b.completion
                if prompt is None or text_a is None or text_b is None:
                    continue
                chosen, rejected = (text_a, text_b) if pref.choice == "a" else (text_b, text_a)
                stages = (a.stage, b.stage) if pref.choice == "a" else (b.stage, a.stage)
                yield PreferredPair(pref.prompt_hash, prompt, chosen, rejected, stages=stages,
                                    rated_at=pref.updated_at)

    def iter_ranked_pairs(self, *, stage: str | None = None) -> Iterator[PreferredPair]:
        """Every ordered pair of every ranking of chat answers: each answer of a better group is chosen
        over each answer of every worse group (answers in one group tie and give no pair)."""
        query = sa.select(RankingRow).order_by(RankingRow.prompt_hash, RankingRow.seq)
        with self._read() as session:
            for ranking in session.scalars(query).all():  # .all(): the loop queries the same session
                if stage is not None and stage not in ranking.stages:
                    continue
                gens = {g.id: g for g in session.scalars(
                    sa.select(GenerationRow).where(GenerationRow.id.in_(ranking.response_ids)))}
                if any(g.kind != "chat" for g in gens.values()) or len(gens) != len(ranking.response_ids):
                    continue
                first = gens[ranking.response_ids[0]]
                prompt = ranking.prompt if ranking.prompt is not None else first.messages
                texts = {rid: (ranking.completions[i] if ranking.completions and ranking.completions[i] is not None
                               else gens[rid].completion) for i, rid in enumerate(ranking.response_ids)}
                if prompt is None or any(t is None for t in texts.values()):
                    continue
                for g, better in enumerate(ranking.ranking):
                    for worse in ranking.ranking[g + 1:]:
                        for w in better:
                            for l in worse:
                                yield PreferredPair(ranking.prompt_hash, prompt, texts[w], texts[l], source="ranking",
                                                    stages=(gens[w].stage, gens[l].stage),
                                                    rated_at=ranking.updated_at)

    def iter_corrections(self, *, stage: str | None = None) -> Iterator[CorrectedAnswer]:
        """Every correction of a chat answer, with the prompt and the original text resolved."""
        query = (
            sa.select(CorrectionRow, GenerationRow)
            .join(GenerationRow, GenerationRow.id == CorrectionRow.response_id)
            .where(GenerationRow.kind == "chat")
            .order_by(GenerationRow.prompt_hash, CorrectionRow.seq)
        )
        if stage is not None:
            query = query.where(GenerationRow.stage == stage)
        with self._read() as session:
            for corr, gen in session.execute(query.execution_options(yield_per=500)):
                prompt = corr.prompt if corr.prompt is not None else gen.messages
                original = corr.original if corr.original is not None else gen.completion
                if prompt is None or original is None:
                    continue
                yield CorrectedAnswer(gen.id, gen.stage, gen.prompt_hash, prompt, original, corr.completion,
                                      rated_at=corr.updated_at)

    def iter_judgements(self, *, since: datetime | None = None, until: datetime | None = None,
                        rater: str | None = None) -> Iterator[Judgement]:
        """Every preference (as a ranking of two) and every ranking, for the leaderboard; filtered by when
        last stated (`since` inclusive, `until` exclusive) and by rater."""
        groups_of = {"a": [[0], [1]], "b": [[1], [0]], "tie": [[0, 1]], "both_bad": [[0, 1]]}
        gen_a, gen_b = aliased(GenerationRow), aliased(GenerationRow)
        prefs = (sa.select(PreferenceRow, gen_a.stage, gen_b.stage)
                 .join(gen_a, gen_a.id == PreferenceRow.response_a)
                 .join(gen_b, gen_b.id == PreferenceRow.response_b)
                 .order_by(PreferenceRow.seq))
        ranks = sa.select(RankingRow).order_by(RankingRow.seq)
        for model in (PreferenceRow, RankingRow):
            conditions = []
            if since is not None:
                conditions.append(model.updated_at >= since)
            if until is not None:
                conditions.append(model.updated_at < until)
            if rater is not None:
                conditions.append(model.rater == rater)
            if model is PreferenceRow:
                prefs = prefs.where(*conditions)
            else:
                ranks = ranks.where(*conditions)
        with self._read() as session:
            for pref, stage_a, stage_b in session.execute(prefs.execution_options(yield_per=1000)):
                yield Judgement(pref.id, pref.rater, [pref.response_a, pref.response_b], [stage_a, stage_b],
                                groups_of[pref.choice], pref.updated_at)
            for row in session.scalars(ranks.execution_options(yield_per=1000)):
                index = {rid: i for i, rid in enumerate(row.response_ids)}
                yield Judgement(row.id, row.rater, list(row.response_ids), list(row.stages),
                                [[index[rid] for rid in group] for group in row.ranking], row.updated_at)

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _generation_row(session: Session, response_id: str, param: str) -> GenerationRow:
        if not isinstance(response_id, str):
            raise InvalidFeedback(f"'{param}' must hold response id strings.", param)
        row = session.get(GenerationRow, response_id)
        if row is None:
            raise UnknownResponse(f"No response with id {response_id!r} was logged by this server.", param)
        return row


def _insert(session: Session) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_update` on both SQLite and PostgreSQL."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _flip(choice: str) -> str:
    return {"a": "b", "b": "a"}.get(choice, choice)


def _text_for(generation: GenerationRow, prompt: Any, completion: Any,
              completion_param: str = "completion") -> tuple[Any, str | None]:
    """The text a rating stores beside the log: nothing when the log has the text, else what was sent.

    Sent text must match the log: the prompt must hash to the logged prompt, and when the answer was
    logged the completion must equal it. Chat prompts are message lists; completion prompts, strings.
    """
    logged = generation.completion is not None
    if prompt is not None:
        if generation.kind == "chat":
            _check_messages(prompt, "prompt")
        elif not isinstance(prompt, str):
            raise InvalidFeedback("'prompt' must be the prompt text for a completion.", "prompt")
        if prompt_hash(prompt) != generation.prompt_hash:
            raise InvalidFeedback("'prompt' is not the prompt this response answered.", "prompt")
    if completion is not None:
        if not isinstance(completion, str):
            raise InvalidFeedback(f"'{completion_param}' must be the answer's text.", completion_param)
        if logged and completion != generation.completion:
            raise InvalidFeedback(f"'{completion_param}' is not the answer this response gave.", completion_param)
    if logged:
        return None, None  # the log is the source of truth
    if prompt is None or completion is None:
        raise InvalidFeedback(
            "This server does not log prompts, so a rating must carry the text it rates: send 'prompt' "
            f"(the chat messages, or the prompt text for a completion) and '{completion_param}' (the answer's text).",
            "prompt" if prompt is None else completion_param)
    return prompt, completion


def _generation(row: GenerationRow) -> GenerationRecord:
    return GenerationRecord(**{f: getattr(row, f) for f in GenerationRecord.__dataclass_fields__})


def _feedback(row: FeedbackRow, stage: str) -> Feedback:
    return Feedback(
        id=row.id, response_id=row.response_id, stage=stage, rater=row.rater, rating=row.rating,  # type: ignore[arg-type]
        comment=row.comment, tags=list(row.tags or []), prompt=row.prompt, completion=row.completion,
        created_at=row.created_at, updated_at=row.updated_at,
    )


def _preference(row: PreferenceRow, stage_a: str, stage_b: str) -> Preference:
    return Preference(
        id=row.id, response_ids=(row.response_a, row.response_b), choice=row.choice,  # type: ignore[arg-type]
        rater=row.rater, stage_a=stage_a, stage_b=stage_b, comment=row.comment,
        created_at=row.created_at, updated_at=row.updated_at,
    )


def _check_ranking(ranking: Any, ids: list[str]) -> list[list[str]]:
    """Groups of ids, best first, covering `ids` exactly once each."""
    if not isinstance(ranking, (list, tuple)) or not all(
        isinstance(g, (list, tuple)) and g and all(isinstance(i, str) for i in g) for g in ranking
    ):
        raise InvalidFeedback("'ranking' must be a list of non-empty groups of response ids, best first.", "ranking")
    placed = [i for group in ranking for i in group]
    if sorted(placed) != sorted(ids):
        raise InvalidFeedback("'ranking' must place every id of 'response_ids' exactly once.", "ranking")
    return [list(group) for group in ranking]


def _ranking(row: RankingRow) -> Ranking:
    return Ranking(id=row.id, response_ids=list(row.response_ids), ranking=[list(g) for g in row.ranking],
                   stages=list(row.stages), rater=row.rater, comment=row.comment, created_at=row.created_at,
                   updated_at=row.updated_at)


def _correction(row: CorrectionRow, stage: str) -> Correction:
    return Correction(id=row.id, response_id=row.response_id, stage=stage, rater=row.rater,
                      completion=row.completion, comment=row.comment, created_at=row.created_at,
                      updated_at=row.updated_at)


def _newest_first_page(session: Session, query: Any, model: Any, kind: str, *, rater: str | None,
                       since: datetime | None, until: datetime | None, limit: int, after: str | None) -> Any:
    """`query` on `model` filtered by rater and `updated_at`, newest first, one page (+1 row to tell
    whether more follow) after the row whose id is `after`."""
    if rater is not None:
        query = query.where(model.rater == rater)
    if since is not None:
        query = query.where(model.updated_at >= since)
    if until is not None:
        query = query.where(model.updated_at < until)
    if after is not None:
        cursor = session.scalars(sa.select(model).where(model.id == after)).one_or_none()
        if cursor is None:
            raise InvalidFeedback(f"'after' names no {kind}: {after!r}.", "after")
        # (updated_at, seq) is a total order, so pages neither skip nor repeat rows.
        query = query.where(sa.or_(
            model.updated_at < cursor.updated_at,
            sa.and_(model.updated_at == cursor.updated_at, model.seq < cursor.seq),
        ))
    return query.order_by(model.updated_at.desc(), model.seq.desc()).limit(limit + 1)
