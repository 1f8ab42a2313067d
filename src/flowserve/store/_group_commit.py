"""Group commit for run records.

Every run writes twice (RUNNING at start, its outcome at the end). One transaction per write
made the database the relay's bottleneck at a few hundred runs per second (bench/RESULTS.md:
the aiosqlite worker thread and SQLAlchemy's flush were the top entries). Here the first writer
to arrive writes; writers arriving while it is busy queue up and their records go together in
the next transaction. Nothing waits for a timer: an idle server writes each record at once, a
busy one writes in batches as large as the load makes them. A run that starts and ends within
one batch is inserted once with its final state.

Written by hand because no library batches SQLAlchemy writes adaptively like this.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import anyio
from sqlalchemy import Table, bindparam

from flowserve.store.database import Database
from flowserve.store.models import Run

log = logging.getLogger("flowserve.store")


class RunWriter:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: list[tuple[str, dict[str, Any], anyio.Event]] = []
        self._busy = False
        self.batches = 0  # for tests and metrics

    async def insert(self, values: dict[str, Any]) -> None:
        await self._submit("insert", values)

    async def update(self, run_id: str, values: dict[str, Any]) -> None:
        await self._submit("update", {"id": run_id, **values})

    async def _submit(self, kind: str, values: dict[str, Any]) -> None:
        done = anyio.Event()
        self._queue.append((kind, values, done))
        if self._busy:
            await done.wait()
            return
        self._busy = True
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._write([(k, v) for k, v, _ in batch])
                except Exception:
                    log.exception("could not write %d run record(s)", len(batch))
                finally:
                    for _, _, event in batch:
                        event.set()
        finally:
            self._busy = False

    async def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        inserts: dict[str, dict[str, Any]] = {}
        updates: list[dict[str, Any]] = []
        for kind, values in batch:
            if kind == "insert":
                inserts[values["id"]] = dict(values)
            elif values["id"] in inserts:
                inserts[values["id"]].update(values)  # started and ended in this batch
            else:
                updates.append(values)
        self.batches += 1
        table = cast(Table, Run.__table__)
        async with self.db.engine.begin() as conn:
            # Core statements, not the ORM: the ORM's unit of work cost more CPU on the event
            # loop than the write itself. executemany wants the same keys in every row.
            for rows in _by_shape(list(inserts.values())):
                await conn.execute(table.insert(), rows)
            for rows in _by_shape(updates):
                fields = [k for k in rows[0] if k != "id"]
                statement = (
                    table.update()
                    .where(table.c.id == bindparam("run_id"))
                    .values({k: bindparam(k) for k in fields})
                )
                await conn.execute(
                    statement, [{"run_id": r["id"], **{k: r[k] for k in fields}} for r in rows]
                )


def _by_shape(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frozenset(row), []).append(row)
    return list(groups.values())
