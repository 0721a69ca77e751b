"""The store: the generation log, ratings, A/B preferences, rankings and corrections, in SQLite
(default) or PostgreSQL.

What it knows: which answer the server gave (`GenerationRecord`), who rated it up or down, which
of two answers to the same prompt a rater preferred, how a rater ranked K = 2..4 answers to one
conversation (ties allowed; an A/B preference reads as a ranking of two, see `iter_judgements`),
and what a rater corrected an answer into. The server, not the client, is the source of
truth for what was rated: a rating references a logged response id. When prompt logging is off the
log keeps only a hash of the prompt, so a rating must carry the text it rates, and that text must
hash to the logged prompt.

What it does not know: HTTP (it raises `StoreError`s; the app maps them to OpenAI errors), TRL's
dataset formats (`server/export.py`), or how answers are produced.

The schema is owned by Alembic (`server/migrations/`); `Store(url)` upgrades it to head. Everything
is synchronous and thread-safe: each method opens its own session on a shared engine.

The modules, bottom up:

    records.py      plain dataclasses, constants, errors, `prompt_hash` (no SQLAlchemy)
    schema.py       the tables, rows as records, the Alembic upgrade
    engine.py       the SQLAlchemy engine for a URL (SQLite pragmas, PostgreSQL pool)
    base.py         `StoreBase`: the engine's sessions
    generations.py  the generation log          } mixins of `Store`
    feedback.py     rate, prefer, rank, correct } (store.py joins them)
    reads.py        pages, export inputs, judgements
    conversations.py  saved conversation trees, share links
    arena.py        blind battles and their votes
    arena_campaigns.py  arena campaigns: queues, overlap, gold questions
    reward_scores.py  reward-model scores of judged answers (the leaderboard's cache)

`from server.store import X` works for every public name of these modules. The plain records are
imported here at once; everything that needs SQLAlchemy on first use (PEP 562), so importing
`server.store.records` (or the records from here) never loads SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from server.store.records import (
    CHOICES,
    KINDS,
    MAX_RANKED,
    MESSAGE_ROLES,
    RATINGS,
    WINNERS,
    ArenaVote,
    Battle,
    BattleConflict,
    BattleSide,
    Campaign,  # the arena
    CampaignItem,
    Choice,
    Conversation,
    ConversationMessage,
    CorrectedAnswer,
    Correction,
    Feedback,
    GenerationRecord,
    InvalidConversation,
    InvalidFeedback,
    Judgement,
    NewMessage,
    Preference,
    PreferredPair,
    Ranking,
    RatedAnswer,
    Rating,
    Share,
    StoreError,
    UnknownConversation,
    UnknownItem,
    UnknownResponse,
    prompt_hash,
    utcnow,
)

if TYPE_CHECKING:
    from server.store.engine import BUSY_SECONDS, create_store_engine
    from server.store.schema import (
        MIGRATIONS_DIR,
        ROWS,
        Base,
        ConversationRow,
        CorrectionRow,
        FeedbackRow,
        GenerationRow,
        MessageRow,
        PreferenceRow,
        RankingRow,
        ShareRow,
        UTCDateTime,
        upgrade_schema,
    )
    from server.store.store import Store

# Public names that need SQLAlchemy -> the module holding them.
_LAZY = {
    "Store": "server.store.store",
    "BUSY_SECONDS": "server.store.engine",
    "create_store_engine": "server.store.engine",
    **{
        name: "server.store.schema"
        for name in (
            "MIGRATIONS_DIR",
            "ROWS",
            "Base",
            "UTCDateTime",
            "GenerationRow",
            "FeedbackRow",
            "PreferenceRow",
            "RankingRow",
            "CorrectionRow",
            "upgrade_schema",
            "ConversationRow",
            "MessageRow",
            "ShareRow",
        )
    },
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later look-ups do not come here
    return value


__all__ = [
    "WINNERS",
    "ArenaVote",
    "Battle",
    "BattleConflict",
    "BattleSide",
    "Campaign",
    "CampaignItem",
    "CHOICES",
    "KINDS",
    "MAX_RANKED",
    "RATINGS",
    "Choice",
    "CorrectedAnswer",
    "Correction",
    "Feedback",
    "GenerationRecord",
    "InvalidFeedback",
    "Judgement",
    "Preference",
    "PreferredPair",
    "RatedAnswer",
    "Ranking",
    "Rating",
    "StoreError",
    "UnknownItem",
    "UnknownResponse",
    "prompt_hash",
    "utcnow",
    "MESSAGE_ROLES",
    "Conversation",
    "ConversationMessage",
    "InvalidConversation",
    "NewMessage",
    "Share",
    "UnknownConversation",
    # loaded on first use (`_LAZY`)
    "BUSY_SECONDS",
    "MIGRATIONS_DIR",
    "ROWS",
    "Base",
    "CorrectionRow",
    "FeedbackRow",
    "GenerationRow",
    "PreferenceRow",
    "RankingRow",
    "Store",
    "UTCDateTime",
    "create_store_engine",
    "upgrade_schema",
    "ConversationRow",
    "MessageRow",
    "ShareRow",
]
