"""Admission: what a request must pass before anything runs, each check once per request.

In order: the API key, of the org in the URL (401, the same answer whether the org, the key
or neither exists); the browser origin against the key's ``allowed_origins`` (403); the key's
request rate (429). A run request then has its flow (404) and body (413/422) checked by its
handler, and last takes a run slot (429 per key / 503 server), so that a refused request
never holds one. The slot is released when the run's response ends, however it ends
(completion, failure, stop, client gone): :class:`SlotResponse` for streams,
``try``/``finally`` for blocking runs.

**Browser access (CORS)** is decided per key. Public keys live in browser code; each lists the
origins allowed to use it (``allowed_origins``; empty = server-to-server only, ``*`` = any
site). Starlette's CORSMiddleware cannot decide per key, so the decision is split in two:

- the **preflight** (``OPTIONS`` with ``Access-Control-Request-Method``) carries no
  Authorization header, so it cannot know the key: the edge answers it permissively for the
  routes declared ``browser=True`` (``flowserve.http.edge``). A preflight grants nothing.
- the **actual request** is decided here once the key is verified (:func:`check_origin`): no
  ``Origin`` header (server-to-server) is allowed; an origin the key lists (or any, with
  ``*``) is allowed and the response, streams included, carries
  ``Access-Control-Allow-Origin: <origin>`` and ``Vary: Origin``; any other origin is refused
  with 403 naming it. A private key is refused from every browser origin it does not list:
  private keys must never sit in browser code.

Error responses to a request with an Origin echo it as well (``flowserve.http.errors``), so
that browser code can read why it was refused, and fetch-event-source sees the status instead
of a network error it would retry forever. That discloses nothing: error bodies carry no data,
and the API takes no cookies (never ``Allow-Credentials``), so there is no ambient authority
for CORS to guard. What ``allowed_origins`` guards is a key's use from other sites' pages.

**Limits** are counted in this process: the rate as a token bucket per key holding a minute's
worth (``rate_limit_per_minute`` of the key, else of the server; 0 turns it off), runs in
flight per key (``max_concurrent_runs_per_key``) and in the process
(``max_concurrent_runs``), all refused at once with ``Retry-After``, never queued. Several
processes behind one load balancer each count their own share (a later issue moves the
counters to Redis).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flowserve.auth import Principal
from flowserve.config import Settings
from flowserve.errors import ForbiddenError, LimitError
from flowserve.http.access import note
from flowserve.services import Services

_ORIGIN = re.compile(r"^(null|[a-z][a-z0-9+.-]*://[^/\s]{1,253})$")


def normalize(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def valid_origin(normalized: str) -> bool:
    """``null`` or scheme://host[:port], the only shapes an Origin header has."""
    return _ORIGIN.match(normalized) is not None


def check_origin(principal: Principal, origin: str | None) -> list[tuple[bytes, bytes]]:
    """The CORS headers for a response to ``origin``; ForbiddenError (403) if the key does not
    allow it. No Origin header: allowed, no headers."""
    if origin is None:
        return []
    allowed = principal.allowed_origins
    if "*" not in allowed:
        wanted = normalize(origin)
        if not _ORIGIN.match(wanted) or wanted not in {normalize(a) for a in allowed}:
            shown = origin[:200]
            if principal.is_private and not allowed:
                raise ForbiddenError(
                    f"origin {shown!r} refused: private API keys may not be used from a browser"
                )
            raise ForbiddenError(f"origin {shown!r} is not allowed for this API key")
    return response_headers(origin)


def response_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", b"retry-after"),
        (b"vary", b"Origin"),
    ]


def error_headers(origin: str) -> dict[str, str]:
    """For an error answer to a browser: readable whatever the key (see the module doc)."""
    return {k.decode(): v.decode("latin-1") for k, v in response_headers(origin)}


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    headers: list[tuple[bytes, bytes]]  # CORS headers for the response (empty: no Origin)

    def json(self, payload: Any, status: int = 200) -> Response:
        response = Response(orjson.dumps(payload), status, media_type="application/json")
        response.raw_headers.extend(self.headers)
        return response


async def admit(
    services: Services,
    limits: Limits,
    request: Request,
    authorization: str | None,
    org: str | None,  # None: a route naming no org takes a key of any org
) -> Caller:
    principal = await services.authenticate(authorization, org)
    note(request.scope, key_id=principal.key_id)
    headers = check_origin(principal, request.headers.get("origin"))
    limits.check_rate(principal)
    return Caller(principal, headers)


class SlotResponse(Response):
    """Sends ``inner`` (a run stream) and releases the run slot when it has ended."""

    def __init__(self, inner: Response, slot: Slot) -> None:
        self.inner = inner
        self.slot = slot
        self.status_code = inner.status_code
        self.background = None
        self.raw_headers = inner.raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self.slot.release()
            run = getattr(self.inner, "run", None)
            note(scope, status=self.inner.status_code, run_id=run.id if run else None)


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
