"""Writes the generation log in group commits.

Every answer is recorded before its final frame is sent (so a rating right after always finds it),
and the store fsyncs each commit. One transaction per answer made 128 streams that end together
wait for 128 commits in turn (about 1 ms each on 2 cores, and GIL time taken from the streams).
Here the records that arrive while a commit is under way go together in the next one: one
transaction, one fsync; each caller returns once its own records are durable. A batch that fails is
written again one caller at a time, so one bad record costs no one else theirs.

It knows the store's `record_generations` and asyncio; nothing about what is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from server.store.records import GenerationRecord


class GenerationLog:
    def __init__(self, store):
        self.store = store
        self._waiting: list[tuple[Sequence[GenerationRecord], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def write(self, records: Sequence[GenerationRecord]) -> None:
        """Returns once `records` are committed; raises what the store raised for them."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((records, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        await done  # a caller cancelled meanwhile leaves its records in the batch: they are still written

    async def _write_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            failed = await self._write([r for records, _ in batch for r in records])
            errors = [await self._write(records) for records, _ in batch] if failed else [None] * len(batch)
            for (_, done), error in zip(batch, errors):
                if done.cancelled():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

    async def _write(self, records: Sequence[GenerationRecord]) -> Exception | None:
        """Commits `records` in one transaction; returns what the store raised, if anything."""
        try:
            await asyncio.to_thread(self.store.record_generations, records)
        except Exception as exc:
            return exc
        return None
