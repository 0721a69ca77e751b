"""The generation log: every answer the server gave, written in group commits by the serving layer
(`server/generation_log.py`) and read back by ratings, exports and RL rounds.

What it knows: the `generations` table, through the sessions of `StoreBase`.

What it does not know: ratings (`feedback.py`), or how answers are produced.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from server.store.base import StoreBase
from server.store.records import GenerationRecord
from server.store.schema import GenerationRow, generation_record


class GenerationLog(StoreBase):
    """The store's generation-log methods (a mixin of `Store`)."""

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
            return generation_record(row) if row else None

    def iter_logged_prompts(self, *, stage: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Every distinct logged chat prompt (messages), oldest first: the prompts of an RL round."""
        query = (
            sa.select(GenerationRow.prompt_hash, GenerationRow.messages)
            .where(GenerationRow.kind == "chat", GenerationRow.messages.is_not(None))
            .order_by(GenerationRow.created_at, GenerationRow.id)
        )
        if stage is not None:
            query = query.where(GenerationRow.stage == stage)
        seen: set[str] = set()
        with self._read() as session:
            for digest, messages in session.execute(query.execution_options(yield_per=500)):
                if digest not in seen:
                    seen.add(digest)
                    yield messages
