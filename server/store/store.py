"""`Store`: the generation log, the writes and the reads of feedback, joined over one engine.

What it knows: which mixin holds which methods — `GenerationLog` (generations.py: log and read
answers), `FeedbackWrites` (feedback.py: rate, prefer, rank, correct, unrate, delete) and
`FeedbackReads` (reads.py: list pages, export inputs, judgements), `Conversations` (conversations.py:
saved conversation trees and share links), `ArenaStore` (arena.py: blind battles and their votes),
`CampaignStore` (arena_campaigns.py: campaigns, queues, gold), `RaterData` (raters.py: one rater's
data, read and deleted; the gold threshold), `RewardScoreStore` (reward_scores.py: the reward-score cache
of judged answers) — all on `StoreBase` (base.py:
the engine and its sessions). `Store(url)` upgrades the schema to head unless `upgrade=False`.

What it does not know: anything the mixins do not; this module only joins them.
"""

from __future__ import annotations

from server.store.arena import ArenaStore
from server.store.arena_campaigns import CampaignStore
from server.store.conversations import Conversations
from server.store.feedback import FeedbackWrites
from server.store.generations import GenerationLog
from server.store.raters import RaterData
from server.store.reads import FeedbackReads
from server.store.reward_scores import RewardScoreStore


class Store(
    GenerationLog,
    FeedbackWrites,
    FeedbackReads,
    Conversations,
    ArenaStore,
    CampaignStore,
    RaterData,
    RewardScoreStore,
):
    """Generation log + feedback over one SQLAlchemy engine. Safe to share between threads."""
