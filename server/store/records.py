"""Plain data that crosses the store's boundary: the records it takes and gives, the constants that
say what a rating may be, the errors it raises, and the prompt hash the serving layer must share.

What it knows: the shape of a logged answer (`GenerationRecord`), of a rating, preference, ranking
and correction as a caller sees them, of the resolved texts the exports read, and of the leaderboard's
judgements. Plain dataclasses, so the serving path, the routes and the UI can use them without
loading SQLAlchemy (a test checks this module imports none).

What it does not know: tables, SQL or sessions (`server/store/schema.py`, `server/store/store.py`),
or HTTP (the app maps `StoreError` to OpenAI errors).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

Rating = Literal["up", "down"]
Choice = Literal["a", "b", "tie", "both_bad"]
RATINGS: tuple[str, ...] = ("up", "down")
CHOICES: tuple[str, ...] = ("a", "b", "tie", "both_bad")
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
    blind: bool = False  # an arena vote: the rater saw no stage names, and index 0 was side a


# -- the blind arena (server/store/arena.py) ----------------------------------------------------

WINNERS: tuple[str, ...] = CHOICES  # an arena vote: side a, side b, tie, both bad
BATTLE_STATES: tuple[str, ...] = ("generating", "ready", "voted", "failed")


class BattleConflict(StoreError):
    """A battle not in the state the action needs (still generating, already voted): a 409."""


@dataclass
class BattleSide:
    """One side's answer in one turn: the logged response and its text."""

    response_id: str
    content: str
    finish_reason: str | None


@dataclass
class Battle:
    """A blind battle: two stages answer the same conversation; the rater sees only sides a and b.

    `turns[i]` holds the user's message of turn i and each side's answer to it; side a's conversation
    is the messages, then for each turn its answer and the next user message."""

    id: str
    rater: str
    stage_a: str
    stage_b: str
    status: str  # one of BATTLE_STATES
    messages: list[dict[str, Any]]  # the opening conversation
    settings: dict[str, Any]  # the decoding settings every turn uses
    turns: list[dict[str, Any]]  # {"user": message | None, "a": BattleSide-dict, "b": BattleSide-dict}
    created_at: datetime
    updated_at: datetime
    campaign_id: str | None = None  # a campaign's battle: one of its items, for one rater
    item_id: str | None = None
    gold: str | None = None  # a gold question: the side whose answer is right ("a" | "b")


@dataclass
class ArenaVote:
    """A rater's verdict on a battle, with the side each stage was on: one per battle."""

    id: str
    battle_id: str
    rater: str
    winner: str  # one of WINNERS
    stage_a: str
    stage_b: str
    response_a: str  # the last turn's answers
    response_b: str
    reasons: list[str]
    comment: str | None
    created_at: datetime


# -- conversations (server/store/conversations.py) ----------------------------------------------

MESSAGE_ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool")


class UnknownConversation(StoreError, LookupError):
    """A conversation, message or share id that does not exist, or is not the caller's (nothing said which)."""


class InvalidConversation(StoreError, ValueError):
    """A conversation write the store refuses (a malformed tree, a parent in another conversation, a chain
    through a deleted message); nothing was written."""


@dataclass
class Conversation:
    """A saved conversation: a tree of messages. `owner` is the API key's client id (None without keys)."""

    id: str
    owner: str | None
    title: str
    created_at: datetime
    updated_at: datetime


@dataclass
class ConversationMessage:
    """One node of a conversation's tree. A parent with two children is a branch (an edit or a regeneration).

    `generation_id` links an answer to the generation log (and so to its ratings); `meta` holds what a front
    door needs to answer for it again (the Responses API: instructions, usage, status). A deleted node keeps
    its place in the tree, without content, so a chain through it fails clearly instead of silently skipping it.
    """

    id: str
    conversation_id: str
    parent_id: str | None
    role: str
    content: str
    stage: str | None
    sampling: dict[str, Any] | None
    speculative: dict[str, Any] | None
    reward_score: float | None
    generation_id: str | None
    meta: dict[str, Any] | None
    deleted: bool
    created_at: datetime


@dataclass
class NewMessage:
    """A message to write. `id` may be chosen by the caller (the Responses API names its answers `resp_…`);
    on import, `id` and `parent_id` are the tree's own, replaced by fresh ids when written."""

    role: str
    content: str
    stage: str | None = None
    sampling: dict[str, Any] | None = None
    speculative: dict[str, Any] | None = None
    reward_score: float | None = None
    generation_id: str | None = None
    meta: dict[str, Any] | None = None
    id: str | None = None
    parent_id: str | None = None


@dataclass
class Share:
    """A read-only link to a conversation, or to one branch of it (the path to `message_id`)."""

    id: str
    conversation_id: str
    message_id: str | None
    created_at: datetime


@dataclass
class Campaign:
    """A set of prompts for the arena, each judged by `overlap` raters, with gold questions mixed in."""

    id: str
    name: str
    guidelines: str
    overlap: int
    stages: list[str] | None  # draw from these (None: every stage)
    settings: dict[str, Any]  # decoding for every item
    items: int  # prompts (gold questions not counted)
    gold: int  # gold questions
    created_at: datetime


@dataclass
class CampaignItem:
    """One prompt of a campaign: its answers are generated once (first rater) and shown to every rater of
    it, sides at random; a gold item has a right and a wrong answer written in advance."""

    id: str
    campaign_id: str
    position: int
    messages: list[dict[str, Any]]
    gold_right: str | None = None
    gold_wrong: str | None = None
    stage_x: str | None = None
    stage_y: str | None = None
    answer_x: dict[str, Any] | None = None  # BattleSide as a dict
    answer_y: dict[str, Any] | None = None

    @property
    def is_gold(self) -> bool:
        return self.gold_right is not None
