"""Which processes are alive, so that a run left RUNNING by a dead one can be told apart from a
run still going in another process (several processes may share one PostgreSQL database).

Each process that runs flows registers an :class:`Instance` row when it starts, refreshes its
``heartbeat_at`` every ``interval`` seconds, and deletes the row when it stops. Every run it
starts carries its id (``runs.owner``). A run still RUNNING whose owner is gone was
interrupted (the process was killed or crashed): :meth:`InstanceStore.sweep` marks it FAILED
with the error "interrupted".

An instance is dead when

- its heartbeat is older than ``3 * interval`` (any host; clocks are assumed to agree within
  seconds), or
- it ran on this machine and pid namespace (same boot id and namespace), and its process is
  gone or its pid now belongs to a process started at another time. This is known at once, so
  a server restarted after a crash fails its predecessor's runs immediately, not 30 s later.

Every process sweeps when it starts and then at each heartbeat, so on shared PostgreSQL the
survivors clean up after a dead peer. A run with no owner (recorded before the column existed)
counts as orphaned. A process that was stalled for longer than the stale limit may find its
runs failed; when such a run does end, its real outcome overwrites "interrupted".
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
from sqlalchemy import delete, or_, select, update

from flowserve.store.database import Database, utcnow
from flowserve.store.models import Instance, Run
from flowserve.store.runs import CANCELLED, FAILED, RUNNING

log = logging.getLogger("flowserve.store")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def pid_started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), or None if it is gone."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces
    return fields[19] if len(fields) > 19 else None


def current_node() -> str:
    """Boot id and pid namespace: processes with the same node can check each other's pids.
    Empty where /proc does not tell (then only heartbeats count)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}" if boot else ""


@dataclass(frozen=True, slots=True)
class Identity:
    id: str
    hostname: str
    node: str
    pid: int
    pid_started: str

    @classmethod
    def current(cls) -> Identity:
        pid = os.getpid()
        return cls(
            uuid.uuid4().hex, socket.gethostname(), current_node(), pid, pid_started(pid) or ""
        )


def _aware(t: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns.
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class InstanceStore:
    def __init__(self, db: Database, interval: float = 10.0, me: Identity | None = None) -> None:
        self.db = db
        self.interval = interval
        self.me = me or Identity.current()
        # Told the ids of the runs a sweep failed, to complete their records from elsewhere
        # (their event logs in Redis: what their clients saw). Set by the composition root.
        self.on_interrupted: Callable[[list[str]], Awaitable[None]] | None = None

    @property
    def id(self) -> str:
        return self.me.id

    async def register(self) -> None:
        me, now = self.me, utcnow()
        async with self.db.session() as s:
            s.add(
                Instance(
                    id=me.id,
                    hostname=me.hostname[:255],
                    node=me.node,
                    pid=me.pid,
                    pid_started=me.pid_started,
                    started_at=now,
                    heartbeat_at=now,
                )
            )

    async def beat(self) -> None:
        async with self.db.session() as s:
            result = await s.execute(
                update(Instance).where(Instance.id == self.me.id).values(heartbeat_at=utcnow())
            )
        if not getattr(result, "rowcount", 1):
            # Another process took us for dead (we were stalled) and deleted the row.
            log.warning("instance %s was presumed dead; registering again", self.me.id)
            await self.register()

    async def deregister(self) -> None:
        async with self.db.session() as s:
            await s.execute(delete(Instance).where(Instance.id == self.me.id))

    def is_dead(self, row: Instance, now: datetime) -> bool:
        if row.id == self.me.id:
            return False
        if _aware(row.heartbeat_at) < now - timedelta(seconds=3 * self.interval):
            return True
        if self.me.node and row.node == self.me.node:
            return pid_started(row.pid) != row.pid_started
        return False

    async def sweep(self, message: str = "interrupted") -> int:
        """Forget dead instances and fail the runs they left RUNNING. Returns how many."""
        now = utcnow()
        async with self.db.session() as s:
            rows = (await s.execute(select(Instance))).scalars().all()
            dead = [row.id for row in rows if self.is_dead(row, now)]
            if dead:
                await s.execute(delete(Instance).where(Instance.id.in_(dead)))
            # One statement: a process registers before it starts any run, so a run this
            # statement sees has its owner's row visible too, unless that owner is dead.
            result = await s.execute(
                update(Run)
                .where(
                    Run.state == RUNNING,
                    or_(Run.owner.is_(None), Run.owner.not_in(select(Instance.id))),
                )
                .values(state=FAILED, error=message, error_type="interrupted", finished_at=now)
                .returning(Run.id)
            )
            failed = list(result.scalars().all())
        if failed:
            log.warning("marked %d interrupted run(s) FAILED", len(failed))
            if self.on_interrupted is not None:
                try:
                    await self.on_interrupted(failed)
                except Exception:
                    log.exception("could not complete the records of interrupted runs")
        return len(failed)

    async def cancel_own(self, message: str, error_type: str) -> int:
        """Runs of this instance still RUNNING (their tasks were cancelled before recording
        their end): CANCELLED, keeping whatever outputs were recorded."""
        async with self.db.session() as s:
            result = await s.execute(
                update(Run)
                .where(Run.state == RUNNING, Run.owner == self.me.id)
                .values(state=CANCELLED, error=message, error_type=error_type, finished_at=utcnow())
            )
        return int(getattr(result, "rowcount", 0) or 0)

    @asynccontextmanager
    async def alive(
        self, leftover_error: str = "process stopped", leftover_type: str = "shutdown"
    ) -> AsyncIterator[None]:
        """Registered, sweeping and heartbeating for the duration of the block."""
        await self.register()
        await self.sweep()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The heartbeat never raises, so the error is the block's: give it back as it was
            # raised (callers catch FlowserveError, not a group).
            raise group.exceptions[0] from None
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.cancel_own(leftover_error, leftover_type)
                    await self.deregister()
                except Exception:
                    log.exception("could not deregister instance %s", self.me.id)

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.beat()
                await self.sweep()
            except Exception as exc:  # a busy or unreachable database: try again next time
                log.warning("instance heartbeat failed: %s", exc)
