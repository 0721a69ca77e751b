"""The engine's scheduler follows the load: confined to the engine's cores under load, free after."""

import asyncio
import os
import threading
import time

import httpx
import psutil
import pytest

from server.placement import SchedulerPlacement, cpu_set


def test_cpu_set_reads_vllm_core_lists():
    assert cpu_set("1") == {1}
    assert cpu_set("1-3,5") == {1, 2, 3, 5}


def placement(confine_at=4):
    """A placement of this process that records its moves instead of making them."""
    moves: list[set[int]] = []

    def record(pid, cpus):
        moves.append(set(cpus))

    return SchedulerPlacement(os.getpid(), {1}, confine_at, set_affinity=record), moves


def test_the_scheduler_moves_onto_the_engine_cores_at_the_mark_and_back_at_half_of_it():
    p, moves = placement(confine_at=4)
    for _ in range(3):
        p.started()
    assert moves == [] and not p.confined
    p.started()
    assert moves == [{1}] and p.confined
    p.finished()  # 3 running: above half the mark, it stays
    assert moves == [{1}]
    p.finished()  # 2 running: back wherever it may run
    assert moves == [{1}, os.sched_getaffinity(os.getpid())] and not p.confined


def test_a_load_hovering_at_the_mark_moves_it_once():
    p, moves = placement(confine_at=4)
    for _ in range(4):
        p.started()
    for _ in range(10):
        p.finished()
        p.started()
    assert moves == [{1}]


def test_a_scheduler_that_is_gone_is_not_an_error():
    def gone(pid, cpus):
        raise ProcessLookupError(pid)

    p = SchedulerPlacement(os.getpid(), {1}, 1, set_affinity=gone)
    p.started()
    p.finished()
    assert not p.confined


@pytest.mark.integration
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="engines get cores of their own from 2 cores up")
def test_under_load_the_real_engine_scheduler_keeps_to_the_engine_cores(live_server):
    server = psutil.Process(live_server.process.pid)
    cores = [p.pid for p in server.children(recursive=True) if p.name().startswith("VLLM::EngineCor")]
    everywhere = os.sched_getaffinity(server.pid)
    assert cores and all(os.sched_getaffinity(pid) == everywhere for pid in cores)

    seen: list[set[int]] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.extend(os.sched_getaffinity(pid) for pid in cores)
            stop.wait(0.02)

    async def load():
        body = {"model": "base", "prompt": "Hello", "max_tokens": 200, "ignore_eos": True, "stream": True}
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=80)) as client:

            async def one():
                async with client.stream("POST", f"{live_server.url}/v1/completions", json=body) as r:
                    async for _ in r.aiter_lines():
                        pass

            await asyncio.gather(*(one() for _ in range(64)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        asyncio.run(load())
    finally:
        stop.set()
        watcher.join()
    assert any(cpus < everywhere and 0 not in cpus for cpus in seen), "the scheduler never left core 0"
    deadline = time.monotonic() + 10  # the server finishes its side a moment after the client's
    while not all(os.sched_getaffinity(pid) == everywhere for pid in cores):
        assert time.monotonic() < deadline, "the scheduler stayed confined after the load"
        time.sleep(0.05)
