"""Where a vLLM engine's scheduler runs on the CPU backend: it follows the engine's load.

A vLLM engine is two processes. The worker runs the model on the cores `VLLM_CPU_OMP_THREADS_BIND`
names (stagechat gives engines cores 1..N-1, `server.vllm_engine`). The engine core schedules and,
between steps, busy-waits for the worker (`sched_yield` in a loop), on any core, so on a small
machine it shares core 0 with this server and its clients. Measured on 2 cores (tiny checkpoint,
128-token streams, this server alone, same run):

| streams | scheduler anywhere | scheduler on the engine's cores |
|---|---|---|
| 16 | 5,506 tok/s | 5,062 |
| 32 | 6,893 tok/s, TTFT p50 38.5 ms | 7,592, 46.9 ms |
| 64 | 9,493 tok/s, TTFT p50 79.6 ms | 11,388, 67.0 ms |

Lightly loaded, the spare core lets scheduling overlap the model's step; under load, the HTTP front
needs that core more. So once `confine_at` requests run, the scheduler's main thread is moved onto
the engine's cores, and back once half as many run. This module knows a process id, core sets and
a count of running requests; nothing about what the requests are.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

CONFINE_AT_ENV = "STAGECHAT_CONFINE_SCHEDULER_AT"
DEFAULT_CONFINE_AT = 48  # between the 32 streams where moving costs TTFT and the 64 where it pays


def cpu_set(spec: str) -> set[int]:
    """'1-3,5' -> {1, 2, 3, 5} (the `VLLM_CPU_OMP_THREADS_BIND` syntax for one engine)."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def confine_at() -> int:
    """From the environment; 0 leaves the scheduler wherever the OS puts it."""
    return int(os.environ.get(CONFINE_AT_ENV, DEFAULT_CONFINE_AT))


class SchedulerPlacement:
    def __init__(
        self,
        pid: int,
        engine_cpus: set[int],
        confine_at: int = DEFAULT_CONFINE_AT,
        set_affinity: Callable[[int, set[int]], None] = os.sched_setaffinity,
    ):
        self.pid = pid
        self.engine_cpus = engine_cpus
        self.anywhere = os.sched_getaffinity(pid)
        self.confine_at = confine_at
        self.release_at = confine_at // 2  # hysteresis: a load hovering at the mark moves nothing
        self._set_affinity = set_affinity
        self.running = 0
        self.confined = False

    def started(self) -> None:
        self.running += 1
        if not self.confined and self.running >= self.confine_at:
            self._move(self.engine_cpus, confined=True)

    def finished(self) -> None:
        self.running -= 1
        if self.confined and self.running <= self.release_at:
            self._move(self.anywhere, confined=False)

    def _move(self, cpus: set[int], *, confined: bool) -> None:
        try:
            self._set_affinity(self.pid, cpus)
        except OSError as exc:  # the engine is gone (shutting down): nothing left to place
            log.debug("could not move the engine core %d: %s", self.pid, exc)
            return
        self.confined = confined
