"""Abuse limits, all checked before the first byte of a response.

- **Rate**: requests per minute per API key, as a token bucket holding a minute's worth
  (``rate_limit_per_minute`` of the key, else of the server; 0 turns it off). Over it: 429 with
  ``Retry-After``, the seconds until the bucket holds a token again.
- **Concurrency**: runs in flight per key (``max_concurrent_runs_per_key``, beyond it 429) and
  in the whole process (``max_concurrent_runs``, beyond it 503), both with ``Retry-After``. A
  request over a cap is refused at once, never queued. The :class:`Slot` a run takes is
  released when the run ends, however it ends; releasing twice is harmless.
- **Request size**: :class:`RequestSizeGuard`, a pure ASGI layer, refuses an over-long URL
  (414) or header block (431) before routing. The server has already read them by then; hard
  byte limits belong to the reverse proxy, this only keeps them away from the application.

Everything is counted in this process. Several processes behind one load balancer each count
their own share; moving the counters to Redis is a later issue.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from flowserve.auth import Principal
from flowserve.config import Settings
from flowserve.errors import LimitError
from flowserve.http.errors import error_response

CONCURRENCY_RETRY_AFTER = 1.0  # seconds: we cannot know when a slot frees; runs are short


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


class Slot:
    """One run in flight, counted against its key and the server until released."""

    __slots__ = ("_key_id", "_limits")

    def __init__(self, limits: Limits, key_id: str) -> None:
        self._limits: Limits | None = limits
        self._key_id = key_id

    def release(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            limits._release(self._key_id)


class Limits:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.default_per_minute = settings.rate_limit_per_minute
        self.max_per_key = settings.max_concurrent_runs_per_key
        self.max_total = settings.max_concurrent_runs
        self.buckets = TokenBuckets(clock)
        self.in_flight: dict[str, int] = {}  # key id -> runs
        self.total = 0

    def check_rate(self, principal: Principal) -> None:
        """Count one request against the key's rate; LimitError (429) when over it."""
        per_minute = principal.rate_limit_per_minute
        if per_minute is None:
            per_minute = self.default_per_minute
        if per_minute <= 0:
            return
        wait = self.buckets.take(principal.key_id, per_minute)
        if wait > 0:
            raise LimitError(
                f"rate limit exceeded: {per_minute} requests per minute for this API key",
                retry_after=wait,
            )
        self.buckets.prune()

    def acquire(self, principal: Principal) -> Slot:
        """A run slot for the key; LimitError (429 per key, 503 server) when none is free."""
        key_id = principal.key_id
        if self.in_flight.get(key_id, 0) >= self.max_per_key:
            raise LimitError(
                f"too many runs in flight for this API key (limit {self.max_per_key})",
                retry_after=CONCURRENCY_RETRY_AFTER,
            )
        if self.total >= self.max_total:
            raise LimitError(
                f"server busy: too many runs in flight (limit {self.max_total})",
                retry_after=CONCURRENCY_RETRY_AFTER,
                status=503,
            )
        self.in_flight[key_id] = self.in_flight.get(key_id, 0) + 1
        self.total += 1
        return Slot(self, key_id)

    def _release(self, key_id: str) -> None:
        self.total -= 1
        left = self.in_flight[key_id] - 1
        if left:
            self.in_flight[key_id] = left
        else:
            del self.in_flight[key_id]


class RequestSizeGuard:
    """Pure ASGI: 414 for a URL (path and query) over ``max_url_bytes``, 431 for headers over
    ``max_header_bytes``. One length sum per request; the response passes through untouched."""

    def __init__(self, app: ASGIApp, max_url_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine function: a request that passes gets the next layer's coroutine
        # itself, so no frame of this layer stays alive for as long as a stream is open.
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode()
            if len(raw_path) + len(scope["query_string"]) > self.max_url_bytes:
                detail = f"URL longer than {self.max_url_bytes} bytes"
                return self._refuse(scope, receive, send, 414, detail)
            if sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_header_bytes:
                detail = f"headers larger than {self.max_header_bytes} bytes"
                return self._refuse(scope, receive, send, 431, detail)
        return self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        await error_response(Request(scope), status, detail)(scope, receive, send)
