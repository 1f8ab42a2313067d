"""Run records: written when a run starts (state RUNNING) and when it ends, and read back as
history (newest first, paged by position rather than by offset)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import or_, select

from flowserve.errors import NotFoundError
from flowserve.store._group_commit import RunWriter
from flowserve.store.database import Database, utcnow
from flowserve.store.models import Run

RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
STATES = (RUNNING, COMPLETED, FAILED, CANCELLED)


@dataclass(frozen=True, slots=True)
class RunFilters:
    """What a history listing keeps; None keeps everything. ``since`` is inclusive, ``until``
    exclusive, both timezone-aware."""

    flow_id: str | None = None
    state: str | None = None
    user_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page of history ended: the last run seen, by (queued_at, id)."""

    queued_at: datetime
    run_id: str


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run record without its inputs, outputs and texts (they can be large)."""

    id: str
    flow_id: str
    flow_version: int
    state: str
    user_id: str | None
    error_type: str | None
    usage: dict[str, Any]
    queued_at: datetime
    started_at: datetime | None
    first_token_at: datetime | None
    finished_at: datetime | None

    @property
    def position(self) -> Position:
        return Position(self.queued_at, self.id)


_SUMMARY = (
    Run.id,
    Run.flow_id,
    Run.flow_version,
    Run.state,
    Run.user_id,
    Run.error_type,
    Run.usage,
    Run.queued_at,
    Run.started_at,
    Run.first_token_at,
    Run.finished_at,
)


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.writer = RunWriter(db)

    async def start(self, values: dict[str, Any]) -> None:
        """Record a run as RUNNING (batched with concurrent writes; see _group_commit)."""
        await self.writer.insert(values)

    async def finish(self, run_id: str, **fields: Any) -> None:
        fields.setdefault("finished_at", utcnow())
        await self.writer.update(run_id, fields)

    async def save_progress(
        self, run_id: str, outputs: dict[str, str], usage: dict[str, Any]
    ) -> None:
        """A RUNNING run's outputs so far: what its record keeps if its process dies."""
        await self.writer.update(run_id, {"outputs": outputs, "usage": usage})

    # Run records that could not be written (see _group_commit): for /metrics and /healthz.
    @property
    def failed_writes(self) -> int:
        """Run records lost since start."""
        return self.writer.failed_writes

    @property
    def last_failure(self) -> float | None:
        """``time.monotonic()`` when the last run record was lost, or None."""
        return self.writer.last_failure

    @property
    def last_failure_error(self) -> str:
        """The type name of the error that lost the last run record ("" if none was)."""
        return self.writer.last_failure_error

    def healthy(self, window: float) -> bool:
        """Whether no run record was lost in the last ``window`` seconds."""
        return self.writer.healthy(window)

    async def get(self, org_id: str, run_id: str) -> Run:
        async with self.db.session() as s:
            row = await s.get(Run, run_id)
        if row is None or row.org_id != org_id:
            raise NotFoundError(f"run {run_id!r} not found")
        return row

    async def changed(
        self, org_id: str, flow_id: str | None, horizon: datetime, ids: Collection[str] = ()
    ) -> list[RunSummary]:
        """What a follower (``flowserve runs tail``) must look at: the runs queued since
        ``horizon``, those RUNNING, and those named by ``ids`` (the ones it saw RUNNING),
        oldest first."""
        seen = or_(Run.queued_at >= _utc(horizon), Run.state == RUNNING)
        if ids:
            seen = or_(seen, Run.id.in_(list(ids)))
        query = select(*_SUMMARY).where(Run.org_id == org_id, seen)
        if flow_id is not None:
            query = query.where(Run.flow_id == flow_id)
        query = query.order_by(Run.queued_at, Run.id)
        async with self.db.session() as s:
            rows = (await s.execute(query)).all()
        return [_summary(row._mapping) for row in rows]

    async def list(
        self, org_id: str, filters: RunFilters, limit: int, after: Position | None = None
    ) -> list[RunSummary]:
        """At most ``limit`` of the org's runs that pass ``filters``, newest first, starting
        after ``after``. Keyset paging (ix_runs_org_queued): a page costs the same however
        deep it is, and runs recorded meanwhile neither repeat nor shift a later page."""
        query = select(*_SUMMARY).where(Run.org_id == org_id)
        if filters.flow_id is not None:
            query = query.where(Run.flow_id == filters.flow_id)
        if filters.state is not None:
            query = query.where(Run.state == filters.state)
        if filters.user_id is not None:
            query = query.where(Run.user_id == filters.user_id)
        if filters.since is not None:
            query = query.where(Run.queued_at >= _utc(filters.since))
        if filters.until is not None:
            query = query.where(Run.queued_at < _utc(filters.until))
        if after is not None:
            at = _utc(after.queued_at)
            # (queued_at, id) < (at, id) spelled so that both databases use the index range
            query = query.where(Run.queued_at <= at, or_(Run.queued_at < at, Run.id < after.run_id))
        query = query.order_by(Run.queued_at.desc(), Run.id.desc()).limit(limit)
        async with self.db.session() as s:
            rows = (await s.execute(query)).all()
        return [_summary(row._mapping) for row in rows]


def summarize(row: Run) -> RunSummary:
    """A whole record's summary (its times with their zone, which SQLite drops)."""
    return _summary({name: getattr(row, name) for name in (column.key for column in _SUMMARY)})


def _summary(row: Mapping[Any, Any]) -> RunSummary:
    return RunSummary(
        id=row["id"],
        flow_id=row["flow_id"],
        flow_version=row["flow_version"],
        state=row["state"],
        user_id=row["user_id"],
        error_type=row["error_type"],
        usage=row["usage"] or {},
        queued_at=_aware(row["queued_at"]),
        started_at=_maybe_aware(row["started_at"]),
        first_token_at=_maybe_aware(row["first_token_at"]),
        finished_at=_maybe_aware(row["finished_at"]),
    )


class _Timed(Protocol):
    @property
    def queued_at(self) -> datetime: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def first_token_at(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime | None: ...


def timings(row: _Timed) -> dict[str, float | None]:
    """Durations in milliseconds, from when the request was accepted."""

    def ms(t: datetime | None) -> float | None:
        if t is None:
            return None
        return round((_aware(t) - _aware(row.queued_at)).total_seconds() * 1000, 3)

    return {
        "queued_ms": ms(row.started_at),
        "first_token_ms": ms(row.first_token_at),
        "total_ms": ms(row.finished_at),
    }


def usage_total(usage: Mapping[str, Any]) -> dict[str, int]:
    """A run's token counts over all its nodes (``usage`` is per node)."""
    prompt = completion = 0
    for counts in usage.values():
        if isinstance(counts, Mapping):
            prompt += counts.get("prompt_tokens") or 0
            completion += counts.get("completion_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# RFC 3339: a date, a time and an offset (or Z), nothing left out. datetime.fromisoformat
# alone takes much more ("2025-01-31", "20250131T0930"), none of it unambiguous in a URL.
_TIMESTAMP = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})?"
)
TIMESTAMP_HINT = "an ISO 8601 time with an offset or Z, like 2025-01-31T09:30:00Z"


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp as an aware datetime, or ValueError(type, message) in pydantic's
    terms (``datetime_parsing``, ``timezone_aware``)."""
    matched = _TIMESTAMP.fullmatch(text)
    if matched is None:
        hint = TIMESTAMP_HINT
        if re.search(r"\d \d{2}:\d{2}$", text):  # "+01:00" unescaped in a URL is " 01:00"
            hint += " (in a URL, write + as %2B)"
        raise ValueError("datetime_parsing", f"Input should be a valid datetime: {hint}")
    date, clock, fraction, offset = matched.groups()
    if offset is None:
        raise ValueError("timezone_aware", "Input should have timezone info (an offset or Z)")
    fraction = f".{fraction[:6]}" if fraction else ""  # finer than microseconds: truncated
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{date}T{clock}{fraction}{offset}")
    except ValueError as exc:  # 2025-02-30, 24:00, offset +25:00
        raise ValueError("datetime_parsing", f"Input should be a valid datetime: {exc}") from None


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(t: datetime) -> int:
    """Microseconds since the epoch: exact, and what a page cursor carries."""
    return (_aware(t) - EPOCH) // timedelta(microseconds=1)


def from_micros(n: int) -> datetime:
    return EPOCH + timedelta(microseconds=n)


def _aware(t: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns (they hold UTC).
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _maybe_aware(t: datetime | None) -> datetime | None:
    return None if t is None else _aware(t)


def _utc(t: datetime) -> datetime:
    # SQLite compares the stored text: a bound time must be UTC like the stored ones.
    return _aware(t).astimezone(UTC)
