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

from flowserve.cluster.base import EventLog
from flowserve.events import (
    Event,
    NodeCompleted,
    NodeDelta,
    NodeResults,
    NodeStarted,
    RunFinished,
)
from flowserve.flows.service import LoadedFlow
from flowserve.logs import run_id_var
from flowserve.runs._channel import Channel
from flowserve.runs._log import RunLog
from flowserve.runs._memory import BoundMemory
from flowserve.runs._readers import Readers
from flowserve.runs._saves import Saves
from flowserve.runs.metrics import RunMetrics as RunMetrics  # re-exported (runs.service)
from flowserve.store.database import utcnow
from flowserve.store.runs import CANCELLED, COMPLETED, FAILED, RUNNING

if TYPE_CHECKING:
    from flowserve.runs.service import RunService

log = logging.getLogger("flowserve.runs")

QUEUED = "QUEUED"
FINAL = frozenset({COMPLETED, FAILED, CANCELLED})
SHUTDOWN = ("server shutting down", "shutdown")  # why runs are stopped at the end of a drain
LEFT = ("run cancelled", "cancelled")  # why a run ends whose consumer left (client gone)


class Run:
    # Slots: one of these lives per open stream (memory per held stream).
    __slots__ = (
        "_clock",
        "_events",
        "_insert_timer",
        "_inserted",
        "_nodes",
        "_parts",
        "_readers",
        "_recorded",
        "_recorded_event",
        "_saves",
        "_scope",
        "_service",
        "_writes",
        "final",
        "first_token_at",
        "flow",
        "id",
        "inputs",
        "is_replica",
        "key_id",
        "loaded",
        "log",
        "queued_at",
        "results",
        "resumable",
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
        sink: EventLog | None = None,
        run_id: str | None = None,
    ) -> None:
        self.id = run_id or uuid.uuid4().hex
        self.state = QUEUED
        self.loaded = loaded
        self.flow = loaded.flow
        self.inputs = dict(inputs)
        self.user_id = user_id
        self.key_id = key_id  # the API key that started it (may stop it)
        self.final: RunFinished | None = None
        self.usage: dict[str, Any] = {}  # node id -> token counts
        # node id -> its NodeResults (citations), in the order they came; None until one does
        self.results: dict[str, NodeResults] | None = None
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
        # Every event, for clients that resume (contract 2.5); and how many clients read
        # the run now: when the last leaves, the run is kept ``resume_grace`` for one to
        # come back, then cancelled.
        self.log = RunLog(sink)
        self.resumable = False  # streamed: kept findable after its end (RunService.ended)
        self.is_replica = False  # a copy of another process's run (begin_replica)
        self._readers = Readers(self, service.watched)
        self._saves = Saves(self, service.save_interval)  # outputs saved while running

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

    def citations(self) -> list[dict[str, Any]]:
        """The citations of the run's retrieving nodes (contract 3.7): in the flow's graph
        order, then as each node numbered them; [] when none (a node with ``citations:
        false`` sends none)."""
        results = self.results
        if not results:
            return []
        found = (results[n].citations for n in self.flow.order if n in results)
        return [citation for citations in found for citation in citations]

    def retrievals(self) -> list[dict[str, Any]]:
        """What each retrieving node says about its search, in graph order."""
        results = self.results
        if not results:
            return []
        found = (results[n].details for n in self.flow.order if n in results)
        return [details for details in found if details is not None]

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

    def begin_replica(self) -> None:
        """Make this a copy of a run another process owns (for a client resuming it here):
        never run, only brought up to date by :meth:`replay`."""
        self.state = RUNNING
        self.is_replica = True

    def replay(self, event: Event) -> None:
        """Apply one event of the run, as its owner logged it (the last is its final word)."""
        if type(event) is RunFinished:
            finished = cast(RunFinished, event)
            self.usage.update(finished.usage)
            if self.state not in FINAL:
                self.state = finished.state
                self.final = finished
                self.log.append(finished, final=True)
        else:
            self._observe(event)

    # -- its readers (flowserve.runs._readers) ------------------------------------------

    def attach(self) -> None:
        """A client reads the run (the one that started it, or one that resumed it)."""
        self._readers.attach()

    def detach(self, grace: float) -> None:
        """A client left. When none is left, the run is cancelled (``LEFT``) unless one
        attaches within ``grace`` seconds, or someone elsewhere still follows it."""
        self._readers.detach(grace)

    @property
    def ended(self) -> bool:
        return self.state in FINAL

    def stop_left(self) -> None:
        self.stop(*LEFT)

    def track(self, task: asyncio.Task[None]) -> None:
        """A task of the run's own that its end waits for. A finished one is let go: a long
        run would otherwise hold each task and its coroutine (about 1 KB) until its end."""
        self._writes.append(task)
        task.add_done_callback(self._writes.remove)

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
                        memory = BoundMemory(
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
            self.log.append(finished, final=True)

    def stop(self, reason: str = "run stopped", error_type: str = "cancelled") -> bool:
        """queued | running → cancelled: recorded CANCELLED with ``reason`` as its error,
        which is also what its client is told last. False if the run had already ended."""
        if self.state in FINAL:
            return False
        # what the runner made before the stop and nobody took yet goes into the log (and
        # so the record) ahead of the final word; what it makes after is left out of both
        self.receive_nowait()
        if self.state in FINAL:  # its own final word was among them
            return False
        self.state = CANCELLED
        self.final = RunFinished(CANCELLED, reason, error_type, usage=self.usage)
        self.log.append(self.final, final=True)
        self._readers.cancel()
        if self._scope is not None:
            self._scope.cancel()
        return True

    def _observe(self, event: Event) -> None:
        # Narrowed by exact type, not isinstance: this runs once per token.
        kind = type(event)
        # the final word is logged by _settle or stop; text the runner made after it (a
        # stop) is not kept by the log, so no client is sent it, and the record leaves it out
        # too (what a resume replays == outputs)
        if kind is not RunFinished and not self.log.append(event) and kind is NodeDelta:
            return
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
        elif kind is NodeResults:  # a few per run at most
            results = cast(NodeResults, event)
            self.results = {**(self.results or {}), results.node_id: results}
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
        self._saves.cancel()
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
            "citations": self.citations(),
            "retrievals": self.retrievals(),
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
        try:
            await self.log.close()  # after the record: a closed log means a recorded run
        except Exception:
            log.exception("could not close the event log of run %s", self.id)

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
        self.track(asyncio.get_running_loop().create_task(self._write_running()))

    async def _write_running(self) -> None:
        if self.state in FINAL:  # ended meanwhile: _end writes the whole record once
            return
        self._inserted = True
        try:
            await self._service.store.start(self._row())
        except Exception:
            log.exception("could not record the start of run %s", self.id)
        self._saves.soon()
