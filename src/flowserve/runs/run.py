"""One run and its lifecycle: queued → running → completed | failed | cancelled.

A :class:`Run` is made by :class:`~flowserve.runs.service.RunService` and lives for one
``async with run.session():`` block. It owns everything about itself:

- **its state**, changed only by one method per transition: :meth:`_begin` (queued →
  running), :meth:`_settle` (running → completed or failed: the runner's ``RunFinished``) and
  :meth:`stop` (queued or running → cancelled: a stop request, a shutdown, or its consumer
  leaving). The first final transition wins: a stop that races the runner's own end (a node
  failing while it is cancelled) leaves the run CANCELLED with the stop's reason, and what
  the runner sends after only brings its usage and text;
- **its events**: the runner's typed events, read by its one consumer through
  :meth:`events`; the outputs so far and the usage are kept from them, and what the consumer
  did not take when it left is read at the end, so the record holds all of it;
- **its record**: written RUNNING once it has lasted ``record_delay`` (a loop timer, no task
  waits per run), then its outcome; a run shorter than that is written once, whole;
- **its stop**: :meth:`stop` cancels the block's scope, which ends the runner and the
  consumer's wait alike;
- **its metrics**: counted once, when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import anyio

from flowserve.events import Event, NodeCompleted, NodeDelta, NodeStarted, RunFinished
from flowserve.flows.service import LoadedFlow
from flowserve.logs import run_id_var
from flowserve.providers.base import Message
from flowserve.runs._channel import Channel
from flowserve.runs.metrics import RunMetrics as RunMetrics  # re-exported (runs.service)
from flowserve.store.database import utcnow
from flowserve.store.memory import MemoryStore
from flowserve.store.runs import CANCELLED, COMPLETED, FAILED, RUNNING

if TYPE_CHECKING:
    from flowserve.runs.service import RunService

log = logging.getLogger("flowserve.runs")

QUEUED = "QUEUED"
FINAL = frozenset({COMPLETED, FAILED, CANCELLED})
SHUTDOWN = ("server shutting down", "shutdown")  # why runs are stopped at the end of a drain
LEFT = ("run cancelled", "cancelled")  # why a run ends whose consumer left (client gone)


class _BoundMemory:
    """The runner's Memory protocol over the store, for one (org, flow, user)."""

    __slots__ = ("flow_id", "org_id", "store", "user_id")

    def __init__(self, store: MemoryStore, org_id: str, flow_id: str, user_id: str) -> None:
        self.store, self.org_id, self.flow_id, self.user_id = store, org_id, flow_id, user_id

    async def load(self, node_id: str, window: int) -> list[Message]:
        return await self.store.load(self.org_id, self.flow_id, node_id, self.user_id, window)

    async def append(self, node_id: str, user: str, assistant: str) -> None:
        await self.store.append(self.org_id, self.flow_id, node_id, self.user_id, user, assistant)


class Run:
    # Slots: one of these lives per open stream (memory per held stream).
    __slots__ = (
        "_clock",
        "_events",
        "_insert_timer",
        "_inserted",
        "_nodes",
        "_parts",
        "_recorded",
        "_recorded_event",
        "_scope",
        "_service",
        "_writes",
        "final",
        "first_token_at",
        "flow",
        "id",
        "inputs",
        "key_id",
        "loaded",
        "queued_at",
        "started_at",
        "state",
        "usage",
        "user_id",
    )

    def __init__(
        self,
        service: RunService,
        loaded: LoadedFlow,
        inputs: Mapping[str, str],
        user_id: str | None,
        key_id: str | None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.state = QUEUED
        self.loaded = loaded
        self.flow = loaded.flow
        self.inputs = dict(inputs)
        self.user_id = user_id
        self.key_id = key_id  # the API key that started it (may stop it)
        self.final: RunFinished | None = None
        self.usage: dict[str, Any] = {}  # node id -> token counts
        self.queued_at = utcnow()
        self._clock = time.monotonic()  # when queued, for the per-node timings
        # node id -> [started, completed, cut short], monotonic seconds or None; filled per
        # node, never per token
        self._nodes: dict[str, list[float | None]] = {}
        self.started_at: datetime | None = None
        self.first_token_at: datetime | None = None
        self._service = service
        nodes = self.flow.nodes
        # The text so far of each node an output shows (the others' text is not kept here).
        self._parts: dict[str, list[str]] = {
            source: [] for source in self.flow.outputs.values() if source in nodes
        }
        self._events: Channel[Event] | None = None
        self._scope: anyio.CancelScope | None = None
        self._insert_timer: asyncio.TimerHandle | None = None
        self._writes: list[asyncio.Task[None]] = []
        self._inserted = False  # the RUNNING record is in the store
        self._recorded = False  # the outcome is in the store
        self._recorded_event: anyio.Event | None = None  # made only if someone waits

    # -- what the consumer reads -------------------------------------------------------

    def output_text(self, out_id: str) -> str:
        source = self.flow.outputs[out_id]
        if source in self.inputs:
            return self.inputs[source]
        return "".join(self._parts.get(source, ()))

    def outputs(self) -> dict[str, str]:
        return {out_id: self.output_text(out_id) for out_id in self.flow.outputs}

    def node_timings(self) -> dict[str, dict[str, Any]]:
        """Each node that started: when (ms after the request was accepted), for how long,
        and how it ended: COMPLETED, or the run's final state for a node cut short by it
        (FAILED for the failing node, CANCELLED for a stopped run), RUNNING while it runs."""
        timings: dict[str, dict[str, Any]] = {}
        final = self.final
        for node_id, (started, completed, cut) in self._nodes.items():
            assert started is not None
            ended = completed if completed is not None else cut
            if completed is not None:
                state = COMPLETED
            elif final is None or cut is None:
                state = RUNNING
            else:
                state = final.state
            timings[node_id] = {
                "started_ms": round((started - self._clock) * 1000, 3),
                "duration_ms": None if ended is None else round((ended - started) * 1000, 3),
                "state": state,
            }
        return timings

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the run, in order, until RunFinished (none for a run stopped before
        it began)."""
        events = self._events
        if events is None:
            return
        observe = self._observe
        async for event in events:
            observe(event)
            yield event

    def receive_nowait(self) -> list[Event]:
        """The events already waiting, without blocking (used to coalesce)."""
        if self._events is None:
            return []
        events = self._events.drain()
        observe = self._observe
        for event in events:
            observe(event)
        return events

    async def wait_recorded(self) -> None:
        if not self._recorded:
            if self._recorded_event is None:
                self._recorded_event = anyio.Event()
            await self._recorded_event.wait()

    # -- the lifecycle -----------------------------------------------------------------

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Run]:
        """Run for as long as the block lasts; leaving it ends the run (CANCELLED if it had
        not ended) and records it, whatever the reason."""
        service = self._service
        token = run_id_var.set(self.id)
        service.active[self.id] = self
        try:
            with anyio.CancelScope() as self._scope:  # cancelled by stop()
                if service.closed:  # slipped in after the drain: stop at once
                    self.stop(*SHUTDOWN)
                if self.state is QUEUED:
                    self._begin()
                    memory = None
                    if self.user_id:
                        memory = _BoundMemory(
                            service.memory, self.loaded.org_id, self.flow.id, self.user_id
                        )
                    async with service.runner.start(self.flow, self.inputs, memory) as events:
                        self._events = events
                        yield self
                else:  # stopped before it began: nothing runs
                    yield self
        finally:
            self._scope = None
            service.ended(self)
            with anyio.CancelScope(shield=True):
                await self._end()
            run_id_var.reset(token)

    def _begin(self) -> None:
        """queued → running. The RUNNING record is written beside the run, not before it: the
        first token does not wait for the database."""
        assert self.state is QUEUED
        self.state = RUNNING
        self.started_at = utcnow()
        delay = self._service.record_delay
        if delay > 0:
            self._insert_timer = asyncio.get_running_loop().call_later(delay, self._insert)
        else:
            self._insert()

    def _settle(self, finished: RunFinished) -> None:
        """running → completed | failed, as the runner says; a run already cancelled stays
        so and keeps only the usage."""
        self.usage.update(finished.usage)
        if self.state is RUNNING and finished.state in (COMPLETED, FAILED):
            self.state = finished.state
            self.final = finished

    def stop(self, reason: str = "run stopped", error_type: str = "cancelled") -> bool:
        """queued | running → cancelled: recorded CANCELLED with ``reason`` as its error,
        which is also what its client is told last. False if the run had already ended."""
        if self.state in FINAL:
            return False
        self.state = CANCELLED
        self.final = RunFinished(CANCELLED, reason, error_type, usage=self.usage)
        if self._scope is not None:
            self._scope.cancel()
        return True

    def _observe(self, event: Event) -> None:
        # Narrowed by exact type, not isinstance: this runs once per token.
        kind = type(event)
        if kind is NodeDelta:
            delta = cast(NodeDelta, event)
            parts = self._parts.get(delta.node_id)
            if parts is not None:
                parts.append(delta.text)
            if self.first_token_at is None:
                self.first_token_at = utcnow()
        elif kind is NodeStarted:
            self._nodes[cast(NodeStarted, event).node_id] = [time.monotonic(), None, None]
        elif kind is NodeCompleted:
            completed = cast(NodeCompleted, event)
            if completed.usage is not None:
                self.usage[completed.node_id] = completed.usage
            times = self._nodes.get(completed.node_id)
            if times is not None:
                times[1] = time.monotonic()
        elif kind is RunFinished:
            self._settle(cast(RunFinished, event))

    async def _end(self) -> None:
        """After the block: take in what the consumer left, settle, record, count."""
        if self._events is not None:
            for event in self._events.drain():
                self._observe(event)
        if self.final is None:  # the consumer left before the end (client gone)
            self.stop(*LEFT)
        ended = time.monotonic()
        for times in self._nodes.values():  # cut short by the end: how long it ran
            if times[1] is None:
                times[2] = ended
        if self._insert_timer is not None:  # ended before being recorded RUNNING
            self._insert_timer.cancel()
        for write in list(self._writes):
            await write
        service = self._service
        service.metrics.count(self)
        final = self.final
        assert final is not None
        outcome = {
            "state": self.state,
            "outputs": self.outputs(),
            "error": final.error,
            "error_type": final.error_type,
            "error_node": final.node_id,
            "usage": self.usage,
            "nodes": self.node_timings(),
            "first_token_at": self.first_token_at,
            "finished_at": utcnow(),
        }
        try:
            if self._inserted:
                await service.store.finish(self.id, **outcome)
            else:
                await service.store.start({**self._row(), **outcome})
        except Exception:
            log.exception("could not record the end of run %s", self.id)
        self._recorded = True
        if self._recorded_event is not None:
            self._recorded_event.set()

    # -- the record --------------------------------------------------------------------

    def _row(self) -> dict[str, Any]:
        # Built when written, not kept from the start: a dict per open stream is memory.
        return {
            "id": self.id,
            "org_id": self.loaded.org_id,
            "flow_id": self.flow.id,
            "flow_version": self.loaded.version,
            "key_id": self.key_id,
            "state": RUNNING,
            "owner": self._service.owner,
            "inputs": self.inputs,
            "outputs": {},
            "usage": {},
            "user_id": self.user_id,
            "queued_at": self.queued_at,
            "started_at": self.started_at,
        }

    def _insert(self) -> None:
        self._insert_timer = None
        write = asyncio.get_running_loop().create_task(self._write_running())
        self._writes.append(write)
        # A finished write is let go: a long run would otherwise hold the task and its
        # coroutine (about 1 KB) until its end.
        write.add_done_callback(self._writes.remove)

    async def _write_running(self) -> None:
        if self.state in FINAL:  # ended meanwhile: _end writes the whole record once
            return
        self._inserted = True
        try:
            await self._service.store.start(self._row())
        except Exception:
            log.exception("could not record the start of run %s", self.id)
