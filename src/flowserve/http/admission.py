"""Admission: what a request must pass before anything runs, each check once per request.

In order: the API key, of the org in the URL (401, the same answer whether the org, the key
or neither exists); the browser origin against the key's ``allowed_origins`` (403); the key's
request rate (429). A run request then has its flow (404) and body (413/422) checked by its
handler, and last takes a run slot (429 per key / 503 server), so that a refused request
never holds one. The slot is released when the run's response ends, however it ends
(completion, failure, stop, client gone): :class:`SlotResponse` for streams,
``try``/``finally`` for blocking runs.

A run request's rate and slot are counted at once, by :meth:`Limits.admit` (one round trip
with Redis), so the edge does not count the rate of routes that start runs: their handler
calls ``admit`` when the request is good, and :meth:`Limits.count_request` when it ends
without a run (refused: 404/413/422, which count against the rate as before, or answered
otherwise, e.g. a resumed stream).

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

**Limits**: the rate as a token bucket per key holding a minute's worth
(``rate_limit_per_minute`` of the key, else of the server; 0 turns it off), runs in flight
per key (``max_concurrent_runs_per_key``) and in all (``max_concurrent_runs``), all refused
at once with ``Retry-After``, never queued. They are counted by the cluster
(``flowserve.cluster``): in this process alone, synchronously, in the embedded default; in
Redis for all processes at once when they share it (and by each process alone while Redis is
unreachable).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flowserve.auth import Principal
from flowserve.cluster.base import Admission, Cluster
from flowserve.cluster.local import LocalCluster
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
    count_rate: bool = True,  # False: a run route, counted by Limits.admit (module doc)
) -> Caller:
    principal = await services.authenticate(authorization, org)
    note(request.scope, key_id=principal.key_id)
    headers = check_origin(principal, request.headers.get("origin"))
    if count_rate and (pending := limits.check_rate(principal)) is not None:
        await pending
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


class Slot:
    """One run in flight, counted against its key and in all until released."""

    __slots__ = ("_cluster", "_key_id", "_slot_id")

    def __init__(self, cluster: Cluster, key_id: str, slot_id: str) -> None:
        self._cluster: Cluster | None = cluster
        self._key_id = key_id
        self._slot_id = slot_id

    def release(self) -> None:
        """Never waits (with Redis, the slot is given back in the background)."""
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.release(self._key_id, self._slot_id)


class Limits:
    def __init__(self, settings: Settings, cluster: Cluster | None = None) -> None:
        self.default_per_minute = settings.rate_limit_per_minute
        self.max_per_key = settings.max_concurrent_runs_per_key
        self.max_total = settings.max_concurrent_runs
        self.cluster: Cluster = cluster or LocalCluster()

    def _per_minute(self, principal: Principal) -> int:
        per_minute = principal.rate_limit_per_minute
        return self.default_per_minute if per_minute is None else per_minute

    def check_rate(self, principal: Principal) -> Awaitable[None] | None:
        """Count one request against the key's rate; LimitError (429) when over it. Decided
        at once (None) when counted in this process, else an awaitable that decides."""
        per_minute = self._per_minute(principal)
        if per_minute <= 0:
            return None
        decided = self.cluster.admit_now(principal.key_id, per_minute, 0, 0, False)
        if decided is None:
            return self._count_shared(principal.key_id, per_minute)
        if decided[0] != "ok":
            raise self._refusal(decided, per_minute)
        return None

    async def _count_shared(self, key_id: str, per_minute: int) -> None:
        decided = await self.cluster.admit(key_id, per_minute, 0, 0, False)
        if decided[0] != "ok":
            raise self._refusal(decided, per_minute)

    async def count_request(self, principal: Principal) -> None:
        """:meth:`check_rate`, for a run route's request that ends without :meth:`admit`
        (refused, or answered without a new run)."""
        pending = self.check_rate(principal)
        if pending is not None:
            await pending

    async def admit(self, principal: Principal) -> Slot:
        """Count the request against the key's rate and take a run slot, at once (429 rate
        or per key, 503 in all)."""
        key_id, per_minute = principal.key_id, self._per_minute(principal)
        cluster = self.cluster
        decided = cluster.admit_now(key_id, per_minute, self.max_per_key, self.max_total, True)
        if decided is None:
            decided = await cluster.admit(
                key_id, per_minute, self.max_per_key, self.max_total, True
            )
        if decided[0] != "ok":
            raise self._refusal(decided, per_minute)
        return Slot(cluster, key_id, decided[2])

    def _refusal(self, decided: Admission, per_minute: int) -> LimitError:
        verdict, wait, _ = decided
        if verdict == "rate":
            return LimitError(
                f"rate limit exceeded: {per_minute} requests per minute for this API key",
                retry_after=wait,
            )
        if verdict == "key":
            return LimitError(
                f"too many runs in flight for this API key (limit {self.max_per_key})",
                retry_after=wait,
            )
        return LimitError(
            f"server busy: too many runs in flight (limit {self.max_total})",
            retry_after=wait,
            status=503,
        )
