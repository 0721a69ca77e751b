"""Healing: an engine that died is restarted with backoff; one that keeps dying is left down.

What it knows: for each engine (by a key its owner chooses: the pool's (checkpoint, speculative
method), the reward service's checkpoint) whether it is down, since when and why, how many times it
died lately, and when it will try again. `watch` looks at the owner's engines twice a second and
reports a dead one to the owner. `died` takes the death, shuts the dead engine down in the background
(what is left of it) and runs the owner's `restart` coroutine function: first after `backoff[0]`
seconds, then doubling up to `backoff[1]` while restarts fail. `crash_loop` deaths (a death or a
failed restart) within its window stop the restarts: the engine stays down, `/ready` and the log say
so, and only a server restart brings it back. Restarts are counted in `/metrics`
(`stagechat_engine_restarts_total{engine}`).

What it does not know: how an engine is built or served (its owner's `restart` does that), HTTP
(`unavailable` only makes the 503 its owner raises), or which requests ran on the engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from server import metrics
from server.errors import APIError

log = logging.getLogger(__name__)

# Seconds before the first restart, and the most between restarts that keep failing.
RESTART_BACKOFF = (1.0, 30.0)
# This many deaths within this many seconds: stop restarting (a crash loop only burns the machine).
CRASH_LOOP = (5, 300.0)
# Retry-After while a restart is under way (a vLLM engine takes tens of seconds to start).
RESTARTING_RETRY_AFTER = 5
# How often the owners' watchers look at their engines (a dead check is a flag read).
WATCH_SECONDS = 0.5


@dataclass
class Outage:
    """An engine that is down: why, since when (monotonic), and when it is tried again."""

    label: str  # the engine, as the log, `/ready` and the metrics name it
    reason: str
    since: float
    retry_at: float | None  # None: gave up (a crash loop)
    deaths: int  # within the crash-loop window

    @property
    def gave_up(self) -> bool:
        return self.retry_at is None

    def retry_after(self, now: float | None = None) -> int:
        """Whole seconds until the next try (at least 1), for a `Retry-After` header."""
        if self.retry_at is None:
            return 0
        left = self.retry_at - (now if now is not None else time.monotonic())
        return max(1, round(left + 0.5)) if left > 0 else RESTARTING_RETRY_AFTER

    def describe(self) -> dict[str, Any]:
        state = "stopped" if self.gave_up else "restarting"
        return {
            "engine": self.label,
            "state": state,
            "error": self.reason,
            "deaths": self.deaths,
            "down_seconds": round(time.monotonic() - self.since, 1),
        }


class Supervisor:
    def __init__(self, *, backoff: tuple[float, float] = RESTART_BACKOFF, crash_loop: tuple[int, float] | None = None):
        self.backoff = backoff
        # STAGECHAT_CRASH_LOOP_DEATHS lowers the count (a test sees a crash loop in two deaths, not five).
        deaths = int(os.environ.get("STAGECHAT_CRASH_LOOP_DEATHS") or CRASH_LOOP[0])
        self.crash_loop = crash_loop or (deaths, CRASH_LOOP[1])
        self.down: dict[Hashable, Outage] = {}
        self._deaths: dict[Hashable, deque[float]] = {}
        self._tasks: dict[Hashable, asyncio.Task] = {}
        self._burials: set[asyncio.Task] = set()  # dead engines being shut down
        self._watcher: asyncio.Task | None = None

    def watch(self, engines: Callable[[], dict[Hashable, Any]], report: Callable[[Any, str], None]) -> None:
        """From now until `shutdown`, `report(engine, reason)` each engine of `engines()` that died."""
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(watch(engines, report))

    def outage(self, key: Hashable) -> Outage | None:
        return self.down.get(key)

    def _count_death(self, key: Hashable) -> int:
        now = time.monotonic()
        deaths = self._deaths.setdefault(key, deque())
        deaths.append(now)
        while deaths and deaths[0] < now - self.crash_loop[1]:
            deaths.popleft()
        return len(deaths)

    def _delay(self, deaths: int) -> float:
        first, most = self.backoff
        return min(first * 2 ** max(deaths - 1, 0), most)

    def died(self, key: Hashable, label: str, reason: str, engine: Any, restart: Callable[[], Awaitable[None]]) -> None:
        """Engine `key` died: shut `engine` down and restart it in the background (unless it is in a
        crash loop). Its owner reports each dead engine once (a stream and the watcher may both see it).
        """
        self._burials.add(task := asyncio.get_running_loop().create_task(_bury(engine, label)))
        task.add_done_callback(self._burials.discard)
        if key in self.down:
            return
        metrics.ENGINE_DEATHS.labels(label).inc()
        deaths = self._count_death(key)
        now = time.monotonic()
        if deaths >= self.crash_loop[0]:
            self._give_up(key, label, reason, now, deaths)
            return
        delay = self._delay(deaths)
        self.down[key] = Outage(label, reason, now, now + delay, deaths)
        log.error(
            "engine %s died (%s); restarting it in %.1f s (%d deaths in the last %.0f s)",
            label,
            reason,
            delay,
            deaths,
            self.crash_loop[1],
        )
        self._tasks[key] = asyncio.get_running_loop().create_task(self._restart(key, restart, delay))

    def _give_up(self, key: Hashable, label: str, reason: str, since: float, deaths: int) -> None:
        self.down[key] = Outage(label, reason, since, None, deaths)
        log.error(
            "engine %s died %d times in %.0f s (last: %s): a crash loop; no more restarts, it stays "
            "down until the server restarts",
            label,
            deaths,
            self.crash_loop[1],
            reason,
        )

    async def _restart(self, key: Hashable, restart: Callable[[], Awaitable[None]], delay: float) -> None:
        outage = self.down[key]
        try:
            while True:
                await asyncio.sleep(delay)
                began = time.monotonic()
                try:
                    await restart()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("engine %s failed to restart", outage.label)
                    outage.reason = f"restart failed: {type(exc).__name__}: {exc}"
                    outage.deaths = self._count_death(key)
                    if outage.deaths >= self.crash_loop[0]:
                        self._give_up(key, outage.label, outage.reason, outage.since, outage.deaths)
                        return
                    delay = self._delay(outage.deaths)
                    outage.retry_at = time.monotonic() + delay
                    continue
                metrics.ENGINE_RESTARTS.labels(outage.label).inc()
                log.info(
                    "engine %s restarted in %.1f s; serving again %.1f s after it died",
                    outage.label,
                    time.monotonic() - began,
                    time.monotonic() - outage.since,
                )
                self.down.pop(key, None)
                return
        finally:
            self._tasks.pop(key, None)

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._burials, return_exceptions=True)


async def _bury(engine: Any, label: str) -> None:
    try:
        await engine.shutdown()
    except Exception:  # it is dead already: what is left to free is best effort
        log.warning("shutting down the dead engine %s failed", label, exc_info=True)


def unavailable(what: str, outage: Outage) -> APIError:
    """The 503 for a request that needs a down engine: names `what` (a stage, a reward model) and when
    to retry; no Retry-After once the supervisor gave up (retrying will not help)."""
    if outage.gave_up:
        return APIError(
            503,
            f"{what} is unavailable: its engine died {outage.deaths} times in a few minutes "
            f"(last: {outage.reason}) and is no longer restarted; the server needs a restart.",
            type="service_unavailable",
            code="engine_crash_loop",
        )
    seconds = outage.retry_after()
    return APIError(
        503,
        f"{what} is unavailable: its engine died ({outage.reason}) and is restarting; retry in {seconds} s.",
        type="service_unavailable",
        code="engine_restarting",
        headers={"Retry-After": str(seconds)},
    )


async def watch(
    engines: Callable[[], dict[Hashable, Any]],
    report: Callable[[Any, str], None],
    every: float = WATCH_SECONDS,
) -> None:
    """Forever: every `every` seconds, report each engine whose `dead()` says it died (an idle engine's
    death is noticed here; a busy one's also by the streams it breaks)."""
    while True:
        await asyncio.sleep(every)
        for engine in list(engines().values()):
            try:
                reason = getattr(engine, "dead", lambda: None)()
            except Exception as exc:  # a check that fails says enough
                reason = f"{type(exc).__name__}: {exc}"
            if reason is not None:
                report(engine, reason)
