"""Admission limits for generations: per-key concurrency, per-key tokens per minute, a global bound.

`Limiter.admit(client, tokens)` is called by the serving layer after a request is validated and
before anything reaches an engine. It either returns a `Lease` (release it when the generation
ends, with the tokens it really used) or raises a 429 `RateLimited` carrying `Retry-After`. A
token budget is reserved up front (prompt + max_tokens × n, as OpenAI counts it) and corrected to
the real count on release. A limit of 0 is off. The limiter knows clients and numbers; nothing of
engines, HTTP or stages. It runs on the event loop only (no locks needed).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from server import metrics
from server.errors import APIError

WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Limits:
    """Configured limits (0 = off)."""

    max_concurrent_per_key: int = 0
    tokens_per_minute_per_key: int = 0
    max_queued_requests: int = 1024  # generations in flight server-wide, running or waiting


class RateLimited(APIError):
    def __init__(self, message: str, retry_after: float, *, limit: str):
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            429, message, type="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": str(seconds)}
        )
        self.retry_after = seconds
        self.limit = limit


class Lease:
    """One admitted generation. `release` is idempotent: the serving layer calls it when the
    generation ends, and a finaliser calls it for a generation that was never run."""

    def __init__(self, limiter: Limiter, client: str, reservation: list[float]):
        self._limiter = limiter
        self.client = client
        self._reservation = reservation  # [timestamp, tokens]: an entry of the client's window
        self.released = False

    def release(self, used_tokens: int | None = None) -> None:
        if self.released:
            return
        self.released = True
        if used_tokens is not None:
            self._reservation[1] = used_tokens  # what the minute's budget really paid
        self._limiter._release(self.client)


class Limiter:
    def __init__(self, limits: Limits = Limits(), *, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self.in_flight = 0
        self._per_client: dict[str, int] = {}
        self._windows: dict[str, deque[list[float]]] = {}
        for name in ("max_concurrent_per_key", "tokens_per_minute_per_key", "max_queued_requests"):
            metrics.LIMIT.labels(name).set(getattr(limits, name))

    def admit(self, client: str, tokens: int) -> Lease:
        """A lease for one generation of (at most) `tokens` tokens, or a 429 saying which limit."""
        limits = self.limits
        if limits.max_queued_requests and self.in_flight >= limits.max_queued_requests:
            raise self._refuse(
                "max_queued_requests",
                RateLimited(
                    f"The server is at its limit of {limits.max_queued_requests} requests in flight; retry shortly.",
                    1,
                    limit="max_queued_requests",
                ),
            )
        running = self._per_client.get(client, 0)
        if limits.max_concurrent_per_key and running >= limits.max_concurrent_per_key:
            raise self._refuse(
                "max_concurrent_per_key",
                RateLimited(
                    f"This key already has {running} requests in flight, its limit is "
                    f"{limits.max_concurrent_per_key}; retry when one finishes.",
                    1,
                    limit="max_concurrent_per_key",
                ),
            )
        now = self.clock()
        window = self._windows.setdefault(client, deque())
        if limits.tokens_per_minute_per_key:
            tpm = limits.tokens_per_minute_per_key
            while window and window[0][0] <= now - WINDOW_SECONDS:
                window.popleft()
            if tokens > tpm:
                raise self._refuse(
                    "tokens_per_minute_per_key",
                    RateLimited(
                        f"This request needs up to {tokens} tokens (prompt + max_tokens × n), more than this key's "
                        f"limit of {tpm} tokens per minute; lower max_tokens or shorten the prompt.",
                        WINDOW_SECONDS,
                        limit="tokens_per_minute_per_key",
                    ),
                )
            used = sum(entry[1] for entry in window)
            if used + tokens > tpm:
                raise self._refuse(
                    "tokens_per_minute_per_key",
                    RateLimited(
                        f"This key has used {used:.0f} of its {tpm} tokens per minute and this request needs up to "
                        f"{tokens}; retry later.",
                        self._wait_for_room(window, used + tokens - tpm, now),
                        limit="tokens_per_minute_per_key",
                    ),
                )
        reservation = [now, float(tokens)]
        if limits.tokens_per_minute_per_key:
            window.append(reservation)
        self._per_client[client] = running + 1
        self.in_flight += 1
        metrics.IN_FLIGHT.set(self.in_flight)
        return Lease(self, client, reservation)

    def _wait_for_room(self, window: deque[list[float]], excess: float, now: float) -> float:
        """Seconds until entries worth `excess` tokens leave the window."""
        freed = 0.0
        for stamp, tokens in window:
            freed += tokens
            if freed >= excess:
                return stamp + WINDOW_SECONDS - now
        return WINDOW_SECONDS

    def _release(self, client: str) -> None:
        count = self._per_client.get(client, 0) - 1
        if count > 0:
            self._per_client[client] = count
        else:
            self._per_client.pop(client, None)
            window = self._windows.get(client)
            if window is not None and not window:
                del self._windows[client]
        self.in_flight -= 1
        metrics.IN_FLIGHT.set(self.in_flight)

    def _refuse(self, limit: str, error: RateLimited) -> RateLimited:
        metrics.RATE_LIMITED.labels(limit).inc()
        return error

    def in_flight_for(self, client: str) -> int:
        return self._per_client.get(client, 0)


class TokenBucket:
    """A rate with a burst: `take()` is True while the rate allows one more event (WebSocket frames)."""

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.stamp = clock()

    def take(self) -> bool:
        if self.rate <= 0:  # off
            return True
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def retry_after(self) -> float:
        return (1 - self.tokens) / self.rate if self.rate > 0 else 0.0
