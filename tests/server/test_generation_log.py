"""The generation log's group commits: on a scripted store (what goes in which transaction) and on
the real databases (every record lands, a bad one costs no one else theirs)."""

from __future__ import annotations

import asyncio
import threading

import pytest
import sqlalchemy as sa

from server.generation_log import GenerationLog
from server.store import GenerationRecord, Store
from tests.records import chat_record


def record(id: str) -> GenerationRecord:
    return chat_record("hi", "hello", id=id)


class GatedStore:
    """Holds its first commit until released, and keeps each commit's ids; fails any with 'bad'."""

    def __init__(self):
        self.commits: list[list[str]] = []
        self.release = threading.Event()

    def record_generations(self, records):
        if not self.commits:
            self.release.wait(10)
        ids = [r.id for r in records]
        if any(i.startswith("bad") for i in ids):
            raise ValueError(f"cannot store {ids}")
        self.commits.append(ids)


async def first_commit_held() -> tuple[GatedStore, GenerationLog, asyncio.Task]:
    """A log whose first commit (record "a") is under way, held by the store until released."""
    store = GatedStore()
    log = GenerationLog(store)
    first = asyncio.create_task(log.write([record("a")]))
    await asyncio.sleep(0.05)
    return store, log, first


def test_records_arriving_during_a_commit_share_the_next_one():
    async def go():
        store, log, first = await first_commit_held()
        rest = [asyncio.create_task(log.write([record(f"b{i}"), record(f"b{i}:1")])) for i in range(10)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in [first, *rest])  # nobody is answered before their commit
        store.release.set()
        await asyncio.gather(first, *rest)
        return store.commits

    commits = asyncio.run(go())
    assert commits == [["a"], [f"b{i}{s}" for i in range(10) for s in ("", ":1")]]


def test_a_failing_batch_is_written_again_one_caller_at_a_time():
    async def go():
        store, log, first = await first_commit_held()
        good = [asyncio.create_task(log.write([record(f"g{i}")])) for i in range(3)]
        bad = asyncio.create_task(log.write([record("bad")]))
        store.release.set()
        await asyncio.gather(first, *good)
        with pytest.raises(ValueError, match="bad"):
            await bad
        return store.commits

    assert asyncio.run(go()) == [["a"], ["g0"], ["g1"], ["g2"]]


def test_a_cancelled_caller_still_has_its_record_written():
    async def go():
        store, log, first = await first_commit_held()
        gone = asyncio.create_task(log.write([record("gone")]))
        await asyncio.sleep(0.01)
        gone.cancel()
        store.release.set()
        await first
        await asyncio.sleep(0.1)
        return store.commits

    assert asyncio.run(go()) == [["a"], ["gone"]]


def test_concurrent_writes_all_land_in_the_database(store: Store):
    async def go():
        log = GenerationLog(store)
        await asyncio.gather(*(log.write([record(f"r{i}")]) for i in range(64)))
        with pytest.raises(sa.exc.IntegrityError):  # a duplicate id fails alone
            await asyncio.gather(log.write([record("r0")]), log.write([record("fresh")]))

    asyncio.run(go())
    assert all(store.get_generation(f"r{i}") for i in range(64))
    assert store.get_generation("fresh") is not None
