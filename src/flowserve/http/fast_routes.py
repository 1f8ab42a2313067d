"""The two streaming routes, dispatched without FastAPI's routing and parameter solving when
their parameters are plainly valid.

FastAPI's per-request work (matching every route, solving each endpoint's parameters through
pydantic, its exception and exit-stack layers, which also wrap ``send`` for every frame) was
about a quarter of the event loop's time on a one-token relay request, most of what flowserve
added to the time to first token beside the upstream round trip (bench/RESULTS.md). This layer
sits inside the request log, size limits, CORS and drain gate, and calls the *same* endpoint
functions (``routes_run``) with parameters parsed here. It only takes a request when every
parameter is one FastAPI would accept unchanged (a known boolean spelling, a plain integer in
range, a string within its length, no repeats); anything else goes on to FastAPI, so what an
invalid request gets back (its 422 and its wording) and the OpenAPI document are FastAPI's.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from flowserve.errors import FlowserveError
from flowserve.http.errors import flowserve_error_handler
from flowserve.http.routes_run import stream_exported_flow, stream_v0

_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_INT = re.compile(r"-?[0-9]{1,10}")
_V0_PREFIX = "/inference/v0/stream/"
_MAX_ID = 64


class _Unusual(Exception):
    """A parameter FastAPI should judge (and describe, if it is wrong)."""


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _Unusual


def _version(value: str) -> int:
    if not _INT.fullmatch(value):
        raise _Unusual
    number = int(value)
    if not -1 <= number <= 2**31 - 1:
        raise _Unusual
    return number


def _ident(value: str | None) -> str:
    if value is None or not 1 <= len(value) <= _MAX_ID:
        raise _Unusual
    return value


def _query(scope: Scope) -> dict[str, str]:
    pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    query = dict(pairs)
    if len(query) != len(pairs):
        raise _Unusual  # a repeated parameter
    return query


class FastRunRoutes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            call = None
            try:
                if path == "/stream_exported_flow":
                    call = _legacy(scope)
                elif path.startswith(_V0_PREFIX):
                    call = _v0(scope, path[len(_V0_PREFIX) :])
            except _Unusual:
                call = None
            if call is not None:
                endpoint, kwargs = call
                request = Request(scope, receive)
                try:
                    response = await endpoint(request, **kwargs)
                except FlowserveError as exc:
                    response = await flowserve_error_handler(request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _authorization(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


def _legacy(scope: Scope) -> tuple[Any, dict[str, Any]]:
    query = _query(scope)
    return stream_exported_flow, {
        "authorization": _authorization(scope),
        "flow_id": _ident(query.get("flow_id")),
        "org": _ident(query.get("org")),
        "delta": _flag(query["delta"]) if "delta" in query else False,
        "version": _version(query["version"]) if "version" in query else -1,
    }


def _v0(scope: Scope, rest: str) -> tuple[Any, dict[str, Any]] | None:
    parts = rest.split("/")
    if len(parts) != 2:
        return None  # not this route (FastAPI answers 404 or 405)
    query = _query(scope)
    if "verbose" in query:
        _flag(query["verbose"])
    return stream_v0, {
        "org": _ident(parts[0]),
        "flow_id": _ident(parts[1]),
        "authorization": _authorization(scope),
        "delta": _flag(query["delta"]) if "delta" in query else True,
        "sse": _flag(query["sse"]) if "sse" in query else False,
        "version": _version(query["version"]) if "version" in query else -1,
        "verbose": False,
    }
