"""Run history: the org's runs listed newest first, and one run's whole record (private key;
declared in ``flowserve.http.routes``).

A listing is paged by position, not by offset: its ``next_cursor`` carries the (queued_at,
id) of the last run it returned, and the next page starts after it (``RunStore.list``), so
runs recorded meanwhile never repeat or shift a page. A cursor is bound to the org and the
filters it was made for by a checksum: one that was altered, or that comes from another
listing, is a 422 rather than a page of something else. The checksum is not a secret: a
cursor grants nothing a caller could not ask for with ``until``, it only has to be told
apart from a mistake.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from starlette.responses import Response

from flowserve.errors import ParameterError
from flowserve.http.access import note
from flowserve.http.routing import Call, Param
from flowserve.store.models import Run
from flowserve.store.runs import (
    STATES,
    TIMESTAMP_HINT,
    Position,
    RunFilters,
    RunSummary,
    from_micros,
    parse_timestamp,
    summarize,
    timings,
    to_micros,
    usage_total,
)

MAX_CURSOR = 256
_CURSOR = re.compile(r"[A-Za-z0-9_-]+")
_BAD_CURSOR = "Value error, not a cursor of this listing (use next_cursor as given)"
_MAX_MICROS = to_micros(datetime.max.replace(tzinfo=None)) - 1


@dataclass(frozen=True, slots=True)
class Filter(Param):
    """An optional query parameter (absent: None) whose text ``read`` turns into its value,
    raising ValueError(type, msg) as :meth:`Param.parse` does; ``extra`` adds schema keywords
    (``enum``, ``format``) to the OpenAPI document."""

    default: Any = None
    read: Callable[[str], Any] | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    def parse(self, raw: str) -> Any:
        text = Param.parse(self, raw)  # the length limits (no super(): a slots dataclass)
        return text if self.read is None else self.read(text)

    def schema(self) -> dict[str, Any]:
        document = Param.schema(self)
        document["schema"].pop("default", None)  # absent means no filter, not null
        document["schema"].update(self.extra)
        return document


def _state(text: str) -> str:
    if text not in STATES:
        choices = ", ".join(f"'{s}'" for s in STATES[:-1]) + f" or '{STATES[-1]}'"
        raise ValueError("enum", f"Input should be {choices}")
    return text


def _cursor(text: str) -> tuple[int, str, str]:
    """A cursor's parts (micros, run id, checksum); its checksum is checked by the handler,
    which knows the org and filters it must match."""
    try:
        if not _CURSOR.fullmatch(text):
            raise ValueError
        parts = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        micros, run_id, check = parts
        if not (
            type(micros) is int
            and 0 <= micros <= _MAX_MICROS
            and isinstance(run_id, str)
            and 0 < len(run_id) <= 64
            and isinstance(check, str)
        ):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise ValueError("value_error", _BAD_CURSOR) from None
    return micros, run_id, check


def _time(text: str) -> datetime:
    return parse_timestamp(text)


FLOW = Filter("flow_id", description="only this flow's runs", min_length=1, max_length=64)
STATE = Filter(
    "state",
    description="only runs in this state",
    read=_state,
    extra=(("enum", list(STATES)),),
)
USER = Filter("user_id", description="only runs with this user_id", min_length=1, max_length=256)
SINCE = Filter(
    "since",
    description=f"only runs created at or after this time: {TIMESTAMP_HINT}",
    max_length=64,
    read=_time,
    extra=(("format", "date-time"),),
)
UNTIL = Filter(
    "until",
    description=f"only runs created before this time: {TIMESTAMP_HINT}",
    max_length=64,
    read=_time,
    extra=(("format", "date-time"),),
)
LIMIT = Param("limit", int, default=50, description="at most this many runs", ge=1, le=500)
CURSOR = Filter(
    "cursor",
    description="the next_cursor of the previous page, with the same filters",
    max_length=MAX_CURSOR,
    read=_cursor,
)
LIST_PARAMS = (FLOW, STATE, USER, SINCE, UNTIL, LIMIT, CURSOR)


def _checksum(org: str, filters: RunFilters, micros: int, run_id: str) -> str:
    since, until = filters.since, filters.until
    bound = [
        org,
        filters.flow_id,
        filters.state,
        filters.user_id,
        None if since is None else to_micros(since),
        None if until is None else to_micros(until),
        micros,
        run_id,
    ]
    return hashlib.sha256(orjson.dumps(bound)).hexdigest()[:16]


def seal(org: str, filters: RunFilters, position: Position) -> str:
    """The cursor of the page after ``position`` in this listing."""
    micros = to_micros(position.queued_at)
    parts = [micros, position.run_id, _checksum(org, filters, micros, position.run_id)]
    return base64.urlsafe_b64encode(orjson.dumps(parts)).rstrip(b"=").decode()


def open_cursor(org: str, filters: RunFilters, parts: tuple[int, str, str]) -> Position:
    micros, run_id, check = parts
    if check != _checksum(org, filters, micros, run_id):
        raise ParameterError([(("query", "cursor"), _BAD_CURSOR, "value_error")])
    return Position(from_micros(micros), run_id)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def summary(run: RunSummary) -> dict[str, Any]:
    """One run in a listing: no inputs, outputs or error text (show has them)."""
    return {
        "run_id": run.id,
        "flow_id": run.flow_id,
        "flow_version": run.flow_version,
        "state": run.state,
        "user_id": run.user_id,
        "created_at": run.queued_at.isoformat(),
        "finished_at": _iso(run.finished_at),
        "timings": timings(run),
        "error_type": run.error_type,
        "usage_total": usage_total(run.usage),
    }


def record(row: Run) -> dict[str, Any]:
    """A run's whole record: what it was given and produced, how it ended, its usage per
    node and in all, and when each node ran (``nodes``: {} for runs recorded before that
    was kept), and what its retrieving nodes found (``citations``, ``retrievals``: [] for runs
    without, or recorded before they were kept)."""
    shown = summary(summarize(row))
    return {
        "run_id": row.id,
        "org": row.org_id,
        "flow_id": row.flow_id,
        "flow_version": row.flow_version,
        "state": row.state,
        "inputs": row.inputs,
        "outputs": row.outputs,
        "error": row.error,
        "error_type": row.error_type,
        "error_node": row.error_node,
        "user_id": row.user_id,
        "usage": row.usage or {},
        "usage_total": shown["usage_total"],
        "nodes": row.nodes or {},
        "citations": row.citations or [],
        "retrievals": row.retrievals or [],
        "timings": shown["timings"],
        "created_at": shown["created_at"],
        "finished_at": shown["finished_at"],
    }


async def list_runs(call: Call) -> Response:
    args = call.args
    org = args["org"]
    since, until = args["since"], args["until"]
    if since is not None and until is not None and until < since:
        msg = "Value error, until must not be before since"
        raise ParameterError([(("query", "until"), msg, "value_error")])
    filters = RunFilters(args["flow_id"], args["state"], args["user_id"], since, until)
    cursor = args["cursor"]
    after = None if cursor is None else open_cursor(org, filters, cursor)
    limit = args["limit"]
    rows = await call.http.services.runs.store.list(org, filters, limit + 1, after)
    more = len(rows) > limit
    rows = rows[:limit]
    payload = {
        "runs": [summary(run) for run in rows],
        "next_cursor": seal(org, filters, rows[-1].position) if more else None,
    }
    note(call.request.scope, status=200)
    return call.admitted.json(payload)


async def show_run(call: Call) -> Response:
    row = await call.http.services.runs.store.get(call.args["org"], call.args["run_id"])
    note(call.request.scope, status=200, run_id=row.id)
    return call.admitted.json(record(row))
