"""The request log: one line per API request, written when its response has ended (for a
stream, when the stream has ended), never per token.

The edge (``flowserve.http.edge``) opens an entry for each request to a route declared
``logged`` and writes the line when the response has ended. It does not wrap ``send`` (that
would cost a call per frame): whoever builds a response notes its status, and the run and key
it concerns, with :func:`note` (the error handlers, the handlers, the streaming response).
The line carries the method, the path with only the query parameters the route declares
(ids and flags; never a header, never a key),
the status, the run id, the key id (the public half of a key) and the duration.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.types import Scope

log = logging.getLogger("flowserve.access")

_ENTRY = "flowserve.access"


def note(scope: Scope, **fields: Any) -> None:
    """Record facts about this request's response for its log line (no-op when not logged)."""
    entry = scope.get("state", {}).get(_ENTRY)
    if entry is not None:
        entry.update(fields)


def _target(scope: Scope, shown: frozenset[str]) -> str:
    raw = scope.get("raw_path") or scope["path"].encode()
    path = raw.decode("latin-1")[:300]  # still percent-encoded: no control characters
    pairs = [
        (k, v[:64]) for k, v in parse_qsl(scope["query_string"].decode("latin-1")) if k in shown
    ]
    return f"{path}?{urlencode(pairs)}" if pairs else path


def open_entry(scope: Scope) -> dict[str, Any]:
    """Start this request's log entry; :func:`note` fills it."""
    entry: dict[str, Any] = {}
    scope.setdefault("state", {})[_ENTRY] = entry
    return entry


def write_line(scope: Scope, entry: dict[str, Any], started: float, shown: frozenset[str]) -> None:
    """The line, showing only the query parameters named in ``shown``."""
    ms = round((time.perf_counter() - started) * 1000, 1)
    fields = {
        "method": scope["method"],
        "path": _target(scope, shown),
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
