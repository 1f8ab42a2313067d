"""The request log: one line per API request, written when its response has ended (for a
stream, when the stream has ended), never per token.

``AccessLog`` is pure ASGI and does not wrap ``send`` (that would cost a call per frame):
whoever builds a response notes its status, and the run and key it concerns, with
:func:`note` (the error handlers, the routes, the streaming response). The line carries the
method, the path with only known, harmless query parameters (never a header, never a key),
the status, the run id, the key id (the public half of a key) and the duration.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("flowserve.access")

_ENTRY = "flowserve.access"
_LOGGED_PREFIXES = ("/stream_exported_flow", "/run_deployed_flow", "/inference/", "/v1/")
_SHOWN_QUERY = {"flow_id", "org", "run_id", "version", "delta", "sse"}


def note(scope: Scope, **fields: Any) -> None:
    """Record facts about this request's response for its log line (no-op when not logged)."""
    entry = scope.get("state", {}).get(_ENTRY)
    if entry is not None:
        entry.update(fields)


def _target(scope: Scope) -> str:
    raw = scope.get("raw_path") or scope["path"].encode()
    path = raw.decode("latin-1")[:300]  # still percent-encoded: no control characters
    pairs = [
        (k, v[:64])
        for k, v in parse_qsl(scope["query_string"].decode("latin-1"))
        if k in _SHOWN_QUERY
    ]
    return f"{path}?{urlencode(pairs)}" if pairs else path


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_LOGGED_PREFIXES):
            await self.app(scope, receive, send)
            return
        entry: dict[str, Any] = {}
        scope.setdefault("state", {})[_ENTRY] = entry
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        except BaseException:
            entry.setdefault("status", 500)
            raise
        finally:
            ms = round((time.perf_counter() - started) * 1000, 1)
            fields = {
                "method": scope["method"],
                "path": _target(scope),
                "status": entry.get("status"),
                "duration_ms": ms,
                "key_id": entry.get("key_id"),
            }
            log.info(
                "%s %s %s %.1fms key=%s",
                fields["method"],
                fields["path"],
                fields["status"] if fields["status"] is not None else "-",
                ms,
                fields["key_id"] or "-",
                extra={"run_id": entry.get("run_id"), "fields": fields},
            )
