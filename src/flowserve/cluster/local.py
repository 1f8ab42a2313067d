"""One process alone: the embedded default. Nothing is shared, nothing is sent anywhere.

:class:`LocalLimits` counts the limits in this process, synchronously (no await on the
request path): a token bucket per key holding a minute's worth of requests, and the runs in
flight per key and in all. :class:`LocalCluster` uses it for every request;
:class:`~flowserve.cluster.redis.RedisCluster` uses one while Redis is unreachable (each
process then counts its own share alone). Stops and invalidations go straight to this
process's handlers; no event log is kept (the run's own in memory is the only one).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flowserve.cluster.base import (
    SLOT_RETRY_AFTER,
    Admission,
    Invalidation,
    InvalidationHandler,
    RunInfo,
    Spawn,
    StopHandler,
)
from flowserve.errors import NotFoundError
from flowserve.events import Event

OK: Admission = ("ok", 0.0, "")


class TokenBuckets:
    """One bucket per key id: ``(tokens, last refill)``; a bucket holds a minute's worth."""

    MAX_BUCKETS = 100_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key_id: str, per_minute: int) -> float:
        """Take one token: 0.0 when there was one, else the seconds until there will be."""
        now = self.clock()
        rate = per_minute / 60.0
        tokens, at = self._buckets.get(key_id, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / rate

    def prune(self) -> None:
        """Forget buckets idle for over a minute: they are full again anyway."""
        if len(self._buckets) > self.MAX_BUCKETS:
            now = self.clock()
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}


class LocalLimits:
    """The rate and the runs in flight, counted in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets = TokenBuckets(clock)
        self.in_flight: dict[str, int] = {}  # key id -> runs
        self.total = 0

    def admit(
        self, key_id: str, per_minute: int, max_per_key: int, max_total: int, slot: bool
    ) -> Admission:
        if per_minute > 0:
            wait = self.buckets.take(key_id, per_minute)
            if wait > 0:
                return ("rate", wait, "")
            self.buckets.prune()
        if not slot:
            return OK
        if self.in_flight.get(key_id, 0) >= max_per_key:
            return ("key", SLOT_RETRY_AFTER, "")
        if self.total >= max_total:
            return ("total", SLOT_RETRY_AFTER, "")
        self.hold(key_id)
        return OK

    def hold(self, key_id: str) -> None:
        """Count a run in flight (admitted here, or by Redis for this process)."""
        self.in_flight[key_id] = self.in_flight.get(key_id, 0) + 1
        self.total += 1

    def release(self, key_id: str) -> None:
        self.total -= 1
        left = self.in_flight[key_id] - 1
        if left:
            self.in_flight[key_id] = left
        else:
            del self.in_flight[key_id]


class _NoLog:
    """A run's event log when nothing is shared: the run keeps its own."""

    __slots__ = ()

    def append(self, events: list[Event]) -> None:
        pass

    async def close(self) -> None:
        pass


NO_LOG = _NoLog()


class LocalCluster:
    shared = False
    write_failures = 0

    def __init__(self, owner: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.owner = owner
        self.limits = LocalLimits(clock)
        self._on_stop: StopHandler | None = None
        self._on_invalidate: InvalidationHandler | None = None

    async def start(
        self, on_stop: StopHandler, on_invalidate: InvalidationHandler, spawn: Spawn | None
    ) -> None:
        self._on_stop, self._on_invalidate = on_stop, on_invalidate

    async def aclose(self) -> None:
        pass

    def status(self) -> dict[str, str]:
        return {"backend": "local", "state": "ok"}

    def admit_now(
        self, key_id: str, per_minute: int, max_per_key: int, max_total: int, slot: bool
    ) -> Admission:
        return self.limits.admit(key_id, per_minute, max_per_key, max_total, slot)

    async def admit(
        self, key_id: str, per_minute: int, max_per_key: int, max_total: int, slot: bool
    ) -> Admission:
        return self.limits.admit(key_id, per_minute, max_per_key, max_total, slot)

    def release(self, key_id: str, slot_id: str) -> None:
        self.limits.release(key_id)

    async def stop(self, info: RunInfo, reason: str) -> bool:
        return self._on_stop is not None and self._on_stop(info.run_id, reason)

    async def invalidate(self, message: Invalidation) -> None:
        if self._on_invalidate is not None:
            self._on_invalidate(message)

    def open_log(self, info: RunInfo) -> _NoLog:
        return NO_LOG

    async def lookup(self, run_id: str) -> RunInfo | None:
        return None  # this process's runs are found in its RunService

    async def read(
        self, run_id: str, after: int, wait: float
    ) -> tuple[list[tuple[int, Event]], bool]:
        raise NotFoundError(f"run {run_id!r} not found")

    async def owner_alive(self, owner: str) -> bool:
        return owner == self.owner

    async def watch(self, run_id: str, seconds: float) -> None:
        pass

    async def watched(self, run_id: str) -> bool:
        return False
