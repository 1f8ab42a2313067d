"""Group commit for run records.

Every run writes twice (RUNNING at start, its outcome at the end). One transaction per write
made the database the relay's bottleneck at a few hundred runs per second (bench/RESULTS.md:
the aiosqlite worker thread and SQLAlchemy's flush were the top entries). Here the first writer
to arrive writes; writers arriving while it is busy queue up and their records go together in
the next transaction. Nothing waits for a timer: an idle server writes each record at once, a
busy one writes in batches as large as the load makes them. A run that starts and ends within
one batch is inserted once with its final state.

Fairness: a leader writes one batch, its own, and then steps down. The submitters that queued
meanwhile wake, and the first of them to run leads the next batch, which takes the whole
queue. So a submitter waits for at most the batch in flight when it arrived plus its own.

Failures: a write that fails with an error that may pass (a locked or unreachable database) is
retried after short pauses. A batch that fails for good is written again record by record, so
one bad record does not take the others with it. A record that still cannot be written is
lost: that is logged (its run id, never its values) and counted in ``failed_writes``,
``last_failure`` and ``last_failure_error``, which /metrics and /healthz read.

Written by hand because no library batches SQLAlchemy writes adaptively like this.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import anyio
from sqlalchemy import Table, bindparam
from sqlalchemy import exc as sa

from flowserve.store.database import Database
from flowserve.store.models import Run

log = logging.getLogger("flowserve.store")

Row = tuple[str, dict[str, Any]]  # ("insert" | "update", column values with "id")

# Errors that may pass if the same write is tried again a moment later: the database is locked
# or busy, read-only for now, or the connection to it broke. Anything else (a constraint, a
# bad value, a programming error) fails again the same way.
TRANSIENT = (sa.OperationalError, sa.InterfaceError, sa.TimeoutError, OSError)


class _Request:
    __slots__ = ("done", "row")

    def __init__(self, row: Row) -> None:
        self.row = row
        self.done = False  # written, or counted as lost


class RunWriter:
    # Pauses before the second and third attempt at a write that failed with a TRANSIENT error.
    retry_delays: tuple[float, ...] = (0.05, 0.2)

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: list[_Request] = []
        self._flight: anyio.Event | None = None  # set when the batch being written is done
        self.batches = 0  # transactions tried, for tests and metrics
        self.failed_writes = 0  # run records lost since start
        self.last_failure: float | None = None  # time.monotonic() when the last one was lost
        self.last_failure_error = ""  # the exception's type name: never its message

    def healthy(self, window: float) -> bool:
        """Whether no run record was lost in the last ``window`` seconds."""
        return self.last_failure is None or time.monotonic() - self.last_failure > window

    async def insert(self, values: dict[str, Any]) -> None:
        await self._submit(("insert", values))

    async def update(self, run_id: str, values: dict[str, Any]) -> None:
        await self._submit(("update", {"id": run_id, **values}))

    async def _submit(self, row: Row) -> None:
        """Return once the record is written or counted as lost; never raise for the latter.

        A record once queued is written even if its submitter is cancelled: the cancellation
        takes effect when this returns (at most two batches later). Leaving earlier could strand
        the record in the queue with no submitter left to lead its batch."""
        request = _Request(row)
        self._queue.append(request)
        cancelled: BaseException | None = None
        with anyio.CancelScope(shield=True):
            while not request.done:
                try:
                    if self._flight is None:
                        await self._lead()  # the queue holds our record: no batch has it
                    else:
                        await self._flight.wait()
                except anyio.get_cancelled_exc_class() as exc:
                    cancelled = exc  # asyncio's task.cancel() is not stopped by a shield
        if cancelled is not None:
            raise cancelled

    async def _lead(self) -> None:
        batch, self._queue = self._queue, []
        flight = self._flight = anyio.Event()
        rows: list[Row] = []
        try:
            rows = _coalesce([request.row for request in batch])
            await self._commit(rows)
        except anyio.get_cancelled_exc_class() as exc:  # mid-write: it may not have committed
            self._lose(rows, exc)
            raise
        finally:
            for request in batch:
                request.done = True
            self._flight = None
            flight.set()

    async def _commit(self, rows: list[Row]) -> None:
        error = await self._attempt(rows)
        if error is None:
            return
        if len(rows) > 1 and not _transient(error):
            log.warning("writing %d run records failed (%s): one by one", len(rows), _name(error))
            for row in rows:  # so that one bad record does not take the others with it
                await self._commit([row])
            return
        self._lose(rows, error)

    async def _attempt(self, rows: list[Row]) -> Exception | None:
        """Write ``rows`` in one transaction, retrying transient errors; return the last error."""
        delays = iter(self.retry_delays)
        while True:
            try:
                await self._write(rows)
                return None
            except Exception as exc:
                delay = next(delays, None)
                if delay is None or not _transient(exc):
                    return exc
                log.warning("writing %d run record(s) failed (%s): retrying", len(rows), _name(exc))
            await anyio.sleep(delay)

    def _lose(self, rows: list[Row], error: BaseException) -> None:
        self.failed_writes += len(rows)
        self.last_failure = time.monotonic()
        self.last_failure_error = _name(error)
        for kind, values in rows:
            # The values and the exception's message (which quotes them) may hold user input.
            log.error("run %s: record (%s) lost: %s", values["id"], kind, _name(error))

    async def _write(self, rows: list[Row]) -> None:
        self.batches += 1
        inserts = [values for kind, values in rows if kind == "insert"]
        updates = [values for kind, values in rows if kind == "update"]
        table = cast(Table, Run.__table__)
        async with self.db.engine.begin() as conn:
            # Core statements, not the ORM: the ORM's unit of work cost more CPU on the event
            # loop than the write itself. executemany wants the same keys in every row.
            for group in _by_shape(inserts):
                await conn.execute(table.insert(), group)
            for group in _by_shape(updates):
                fields = [k for k in group[0] if k != "id"]
                statement = (
                    table.update()
                    .where(table.c.id == bindparam("run_id"))
                    .values({k: bindparam(k) for k in fields})
                )
                await conn.execute(
                    statement, [{"run_id": r["id"], **{k: r[k] for k in fields}} for r in group]
                )


def _coalesce(rows: list[Row]) -> list[Row]:
    """One insert per run, carrying any update of the same run queued after it."""
    inserts: dict[str, dict[str, Any]] = {}
    updates: list[dict[str, Any]] = []
    for kind, values in rows:
        if kind == "insert":
            inserts[values["id"]] = dict(values)
        elif values["id"] in inserts:
            inserts[values["id"]].update(values)  # started and ended in this batch
        else:
            updates.append(values)
    return [("insert", v) for v in inserts.values()] + [("update", v) for v in updates]


def _by_shape(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frozenset(row), []).append(row)
    return list(groups.values())


def _transient(error: Exception) -> bool:
    """Whether the same write may succeed if tried again a moment later."""
    if isinstance(error, sa.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, TRANSIENT)


def _name(error: BaseException) -> str:
    return type(error).__name__
