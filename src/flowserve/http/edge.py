"""The way in: one pure-ASGI layer between uvicorn and the handlers.

For each HTTP request, once: the match against the route table (``flowserve.http.routes``),
then what the matched route declares: its access-log entry (``logged``), the size guard (414
for the URL, 431 for the headers), a CORS preflight answered (``browser``), a run refused
while the server drains (``starts_run``: 503 with ``Retry-After``), and the call: parameters
parsed (422, all problems at once), the key admitted (the route's ``key`` kind: 401, 403,
429), the handler. A path no route has goes to Starlette (404, and the lifespan).

No BaseHTTPMiddleware and no wrapper around ``send``: a stream's frames go from its response
straight to uvicorn. What passes through :meth:`Edge.__call__` gets the next coroutine
itself, so no frame of this layer stays alive for as long as a stream is open, except the
access log's, which must see the stream end.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from flowserve.errors import FlowserveError, ForbiddenError
from flowserve.http.access import note, open_entry, write_line
from flowserve.http.admission import admit, normalize, valid_origin
from flowserve.http.errors import error_response, flowserve_error_handler
from flowserve.http.routing import Call, ErrorShape, Route, RouteTable
from flowserve.runs.run import SHUTDOWN

if TYPE_CHECKING:
    from flowserve.http.app import HttpState

log = logging.getLogger("flowserve.http")

ALLOW_HEADERS = b"authorization, content-type, last-event-id, accept"
# A preflight also allows the other headers it asks for, when they are plain header names:
# the official OpenAI JavaScript SDK (calling /v1/chat/completions from a page) sends its
# x-stainless-* headers, and a fixed list would break each time an SDK adds one. A preflight
# grants nothing by itself (see flowserve.http.admission), so naming more headers is safe.
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
MAX_REQUESTED_HEADERS = 32
_BASE_HEADERS = [n.strip() for n in ALLOW_HEADERS.split(b",")]
MAX_AGE = b"600"
PREFLIGHT_VARY = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


class Edge:
    def __init__(self, http: HttpState, table: RouteTable, fallback: ASGIApp) -> None:
        self.http = http
        self.table = table
        self.fallback = fallback
        settings = http.services.settings
        self.max_url_bytes = settings.max_url_bytes
        self.max_header_bytes = settings.max_header_bytes

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.fallback(scope, receive, send)
        matched = self.table.match(scope["method"], scope["path"])
        if matched is None:
            return self.fallback(scope, receive, send)
        routes, values = matched
        if any(route.logged for route in routes.values()):
            return self._logged(routes, values, scope, receive, send)
        return self._handle(routes, values, scope, receive, send)

    async def _logged(
        self,
        routes: dict[str, Route],
        values: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        entry = open_entry(scope)
        started = time.perf_counter()
        try:
            await self._handle(routes, values, scope, receive, send)
        except BaseException:
            entry.setdefault("status", 500)
            raise
        finally:
            route = routes.get(scope["method"]) or next(iter(routes.values()))
            write_line(scope, entry, started, route.shown)

    def _handle(
        self,
        routes: dict[str, Route],
        values: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> Awaitable[None]:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        if len(raw_path) + len(scope["query_string"]) > self.max_url_bytes:
            detail = f"URL longer than {self.max_url_bytes} bytes"
            return self._refuse(scope, receive, send, 414, detail, shape=_shape(routes))
        if sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_header_bytes:
            detail = f"headers larger than {self.max_header_bytes} bytes"
            return self._refuse(scope, receive, send, 431, detail, shape=_shape(routes))
        method = scope["method"]
        route = routes.get(method)
        if route is None:
            if method == "OPTIONS":
                allowed = [r.method for r in routes.values() if r.browser]
                origin = _preflight_origin(scope) if allowed else None
                if origin is not None:
                    return self._preflight(scope, send, origin, allowed)
            allow = ", ".join(sorted(routes))
            headers = {"Allow": allow}
            return self._refuse(
                scope, receive, send, 405, "Method Not Allowed", headers, _shape(routes)
            )
        if route.starts_run:
            runs = self.http.services.runs
            if runs.draining:
                assert runs.drain_deadline is not None
                retry_after = max(1, math.ceil(runs.drain_deadline - time.monotonic()))
                headers = {"Retry-After": str(retry_after), "Connection": "close"}
                return self._refuse(
                    scope, receive, send, 503, SHUTDOWN[0], headers, route.errors_as
                )
        return self._call(route, values, scope, receive, send)

    async def _call(
        self, route: Route, values: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        request = Request(scope, receive)
        http = self.http
        response: Response
        try:
            args = route.parse(scope, values)
            caller = None
            if route.key is not None:
                caller = await admit(
                    http.services,
                    http.limits,
                    request,
                    _authorization(scope),
                    args.get("org"),
                    count_rate=not route.starts_run,  # a run's rate: with its slot
                )
                if route.key == "private" and not caller.principal.is_private:
                    raise ForbiddenError(f"a private API key is needed to {route.action}")
            response = await route.handler(Call(request, args, caller, http))
        except FlowserveError as exc:
            response = await flowserve_error_handler(request, exc, route.errors_as)
        except Exception:
            log.exception("%s %s failed", route.method, route.path)
            response = error_response(request, 500, "internal server error", None, route.errors_as)
        await response(scope, receive, send)

    @staticmethod
    async def _refuse(
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        detail: str,
        headers: dict[str, str] | None = None,
        shape: ErrorShape = "flowserve",
    ) -> None:
        response = error_response(Request(scope), status, detail, headers, shape)
        await response(scope, receive, send)

    @staticmethod
    async def _preflight(scope: Scope, send: Send, origin: bytes, methods: list[str]) -> None:
        note(scope, status=204)
        headers = [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", ", ".join(sorted(methods)).encode()),
            (b"access-control-allow-headers", _allowed_headers(scope)),
            (b"access-control-max-age", MAX_AGE),
            (b"vary", PREFLIGHT_VARY),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _shape(routes: dict[str, Route]) -> ErrorShape:
    """How errors read at a path (the same for all its methods)."""
    return next(iter(routes.values())).errors_as


def _preflight_origin(scope: Scope) -> bytes | None:
    """The Origin of a CORS preflight worth answering, else None (a plain OPTIONS: 405)."""
    headers: dict[bytes, Any] = dict(scope["headers"])
    origin = headers.get(b"origin")
    if origin is None or b"access-control-request-method" not in headers:
        return None
    return origin if valid_origin(normalize(origin.decode("latin-1"))) else None


def _allowed_headers(scope: Scope) -> bytes:
    """:data:`ALLOW_HEADERS` and the preflight's requested headers: each checked to be a
    header name, at most :data:`MAX_REQUESTED_HEADERS` of them, or none if any is not."""
    requested = b",".join(v for k, v in scope["headers"] if k == b"access-control-request-headers")
    names = [n.strip().lower() for n in requested.split(b",") if n.strip()]
    if len(names) > MAX_REQUESTED_HEADERS or not all(_HEADER_NAME.fullmatch(n) for n in names):
        return ALLOW_HEADERS
    return b", ".join(dict.fromkeys(_BASE_HEADERS + names))


def _authorization(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None
