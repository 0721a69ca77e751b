"""Reward scores of logged answers: what the leaderboard's reward-agreement figures read.

What it knows: the `reward_scores` table — one row per (answer, reward model), with the checkpoint
that served the name when it scored (a row from another checkpoint counts as missing, so a retrained
reward model under the same name is scored afresh) — and what a reward model needs to score a logged
answer: its prompt (chat messages or completion text) and its text, from the generation log.

What it does not know: reward models or how scores are computed (`server/reward_agreement.py` asks
`server.rewards` and writes the results here), or which answers were judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from server.store.base import StoreBase
from server.store.records import utcnow
from server.store.schema import GenerationRow, RewardScoreRow

_CHUNK = 500  # ids per IN (...): well under SQLite's and PostgreSQL's parameter limits


@dataclass(frozen=True)
class ScoringInput:
    """What a reward model reads for one logged answer, and the score the serving layer gave it, if any."""

    prompt: list[dict[str, Any]] | str
    completion: str
    reward_model: str | None  # the reward model that scored it when it was served
    reward_score: float | None


class RewardScoreStore(StoreBase):
    """The store's reward-score cache (a mixin of `Store`)."""

    def cached_reward_scores(
        self, reward_model: str, checkpoint: str, generation_ids: Iterable[str]
    ) -> dict[str, tuple[float | None, str | None]]:
        """(score, error) per answer this reward model, served by `checkpoint`, has scored."""
        ids = sorted(set(generation_ids))
        out: dict[str, tuple[float | None, str | None]] = {}
        with self._read() as session:
            for start in range(0, len(ids), _CHUNK):
                query = sa.select(RewardScoreRow.generation_id, RewardScoreRow.score, RewardScoreRow.error).where(
                    RewardScoreRow.reward_model == reward_model,
                    RewardScoreRow.checkpoint == checkpoint,
                    RewardScoreRow.generation_id.in_(ids[start : start + _CHUNK]),
                )
                out.update({gid: (score, error) for gid, score, error in session.execute(query).tuples()})
        return out

    def save_reward_scores(
        self, reward_model: str, checkpoint: str, scores: Sequence[tuple[str, float | None, str | None]]
    ) -> None:
        """Write (generation id, score, error) rows, replacing this reward model's earlier ones."""
        if not scores:
            return
        now = utcnow()
        rows = [
            {
                "generation_id": gid,
                "reward_model": reward_model,
                "checkpoint": checkpoint,
                "score": score,
                "error": error,
                "scored_at": now,
            }
            for gid, score, error in scores
        ]
        with self._writing() as session:
            if session.bind.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            statement = insert(RewardScoreRow)
            # An upsert: two scorings of one answer at once (two processes) both land, the later one wins.
            statement = statement.on_conflict_do_update(
                index_elements=["generation_id", "reward_model"],
                set_={c: statement.excluded[c] for c in ("checkpoint", "score", "error", "scored_at")},
            )
            session.execute(statement, rows)

    def scoring_inputs(self, generation_ids: Iterable[str]) -> dict[str, ScoringInput]:
        """The prompt and text of these logged answers — those logged with text (prompt logging on)."""
        ids = sorted(set(generation_ids))
        out: dict[str, ScoringInput] = {}
        columns = (
            GenerationRow.id,
            GenerationRow.kind,
            GenerationRow.messages,
            GenerationRow.prompt,
            GenerationRow.completion,
            GenerationRow.reward_model,
            GenerationRow.reward_score,
        )
        with self._read() as session:
            for start in range(0, len(ids), _CHUNK):
                query = sa.select(*columns).where(
                    GenerationRow.id.in_(ids[start : start + _CHUNK]), GenerationRow.completion.is_not(None)
                )
                for gid, kind, messages, prompt, completion, model, score in session.execute(query).tuples():
                    text_prompt = messages if kind == "chat" else prompt
                    if text_prompt is not None:
                        out[gid] = ScoringInput(text_prompt, completion, model, score)
        return out
