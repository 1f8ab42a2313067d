"""Run records: written when a run starts (state RUNNING) and when it ends."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flowserve.errors import NotFoundError
from flowserve.store._group_commit import RunWriter
from flowserve.store.database import Database, utcnow
from flowserve.store.models import Run

RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"


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


def timings(row: Run) -> dict[str, float | None]:
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


def _aware(t: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns.
    from datetime import UTC

    return t if t.tzinfo else t.replace(tzinfo=UTC)
