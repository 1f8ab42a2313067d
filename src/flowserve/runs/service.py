"""Publishing flows and running them, with run records and conversation memory.

``FlowService`` validates on publish and caches compiled flows. ``RunService.execute`` starts
a run, yields a :class:`Run` whose ``events()`` the HTTP layer encodes, and records the outcome
whatever happens: COMPLETED, FAILED, or CANCELLED with the partial outputs when the consumer
leaves early (client disconnect, stop).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from flowserve.auth import Principal
from flowserve.cache import RefreshingCache
from flowserve.events import Event, NodeDelta, RunFinished
from flowserve.flows.graph import Flow, compile_flow
from flowserve.flows.loader import check_counts, parse_flow_data, spec_from_data
from flowserve.logs import run_id_var
from flowserve.providers.base import Message
from flowserve.providers.registry import ProviderRegistry
from flowserve.runs._channel import Channel
from flowserve.runs.runner import Runner
from flowserve.store.database import utcnow
from flowserve.store.flows import FlowStore, StoredFlow
from flowserve.store.memory import MemoryStore
from flowserve.store.runs import CANCELLED, RUNNING, RunStore

log = logging.getLogger("flowserve.runs")


@dataclass(frozen=True, slots=True)
class LoadedFlow:
    org_id: str
    version: int
    flow: Flow


class FlowService:
    def __init__(
        self,
        store: FlowStore,
        registry: ProviderRegistry,
        cache_ttl: float,
        max_nodes: int = 500,
        max_outputs: int = 100,
    ) -> None:
        self.store = store
        self.registry = registry
        self.max_nodes, self.max_outputs = max_nodes, max_outputs
        self._compiled: dict[tuple[str, str, int], LoadedFlow] = {}
        # (org, flow id) -> its latest stored version; how long another process's publish
        # can go unseen is the ttl.
        self.latest: RefreshingCache[tuple[str, str], StoredFlow] = RefreshingCache(cache_ttl)

    def compile_text(self, text: str) -> tuple[dict[str, Any], Flow]:
        data = parse_flow_data(text)
        check_counts(data, self.max_nodes, self.max_outputs)
        flow = compile_flow(spec_from_data(data), self.registry)
        return flow.spec.model_dump(mode="json"), flow

    async def publish(self, org_id: str, text: str) -> tuple[StoredFlow, Flow]:
        # Off the event loop: parsing and compiling a large file takes long enough to stall
        # every open stream (a 0.87 MB flow held /healthz for 5.8-8.0 s).
        spec, flow = await anyio.to_thread.run_sync(self.compile_text, text)
        stored = await self.store.publish(org_id, spec, text)
        self.latest.invalidate((org_id, flow.id))
        return stored, flow

    async def get(self, org_id: str, flow_id: str, version: int | None = None) -> LoadedFlow:
        if version is not None and version >= 0:
            loaded = self._compiled.get((org_id, flow_id, version))
            if loaded is not None:
                return loaded
            stored = await self.store.get(org_id, flow_id, version)
        else:
            stored = await self.latest.get(
                (org_id, flow_id), lambda: self.store.get(org_id, flow_id, None)
            )
        key = (org_id, flow_id, stored.version)
        loaded = self._compiled.get(key)
        if loaded is None:
            flow = compile_flow(spec_from_data(stored.spec), self.registry)
            loaded = self._compiled[key] = LoadedFlow(org_id, stored.version, flow)
        return loaded


class _BoundMemory:
    """The runner's Memory protocol over the store, for one (org, flow, user)."""

    def __init__(self, store: MemoryStore, org_id: str, flow_id: str, user_id: str) -> None:
        self.store, self.org_id, self.flow_id, self.user_id = store, org_id, flow_id, user_id

    async def load(self, node_id: str, window: int) -> list[Message]:
        return await self.store.load(self.org_id, self.flow_id, node_id, self.user_id, window)

    async def append(self, node_id: str, user: str, assistant: str) -> None:
        await self.store.append(self.org_id, self.flow_id, node_id, self.user_id, user, assistant)


class Run:
    """One run in progress: its identity, and the text each node has produced so far."""

    def __init__(
        self, run_id: str, loaded: LoadedFlow, inputs: Mapping[str, str], user_id: str | None
    ) -> None:
        self.id = run_id
        self.loaded = loaded
        self.flow = loaded.flow
        self.inputs = dict(inputs)
        self.user_id = user_id
        self.parts: dict[str, list[str]] = {}  # filled by the runner as text arrives
        self.final: RunFinished | None = None
        self.usage: dict[str, Any] = {}
        self.first_token_at: Any = None
        self.key_id: str | None = None  # the API key that started it (may stop it)
        self.recorded = False  # the outcome is in the store
        self._recorded: anyio.Event | None = None  # made only if someone waits for it
        self.stopped: tuple[str, str] | None = None  # (error, error_type) when stopped
        self.pending_record: dict[str, Any] | None = None  # not recorded yet: write once
        self._stream: Channel[Event] | None = None

    async def wait_recorded(self) -> None:
        if not self.recorded:
            if self._recorded is None:
                self._recorded = anyio.Event()
            await self._recorded.wait()

    def mark_recorded(self) -> None:
        self.recorded = True
        if self._recorded is not None:
            self._recorded.set()

    def output_text(self, out_id: str) -> str:
        source = self.flow.outputs[out_id]
        if source in self.inputs:
            return self.inputs[source]
        return "".join(self.parts.get(source, ()))

    def outputs(self) -> dict[str, str]:
        return {out_id: self.output_text(out_id) for out_id in self.flow.outputs}

    def _observe(self, event: Event) -> None:
        if type(event) is NodeDelta:
            if self.first_token_at is None:
                self.first_token_at = utcnow()
        elif type(event) is RunFinished:
            self.final = event

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the run, in order, until RunFinished."""
        assert self._stream is not None
        observe = self._observe
        async for event in self._stream:
            observe(event)
            yield event

    def receive_nowait(self) -> list[Event]:
        """The events already waiting, without blocking (used to coalesce)."""
        assert self._stream is not None
        events = self._stream.drain()
        observe = self._observe
        for event in events:
            observe(event)
        return events


SHUTDOWN = ("server shutting down", "shutdown")  # why runs are stopped at the end of a drain


class RunService:
    def __init__(
        self,
        flows: FlowService,
        runs: RunStore,
        memory: MemoryStore,
        runner: Runner,
        owner: str | None = None,
        record_delay: float = 0.0,
    ) -> None:
        self.flows = flows
        self.runs = runs
        self.memory = memory
        self.runner = runner
        self.owner = owner  # this process's instance id, recorded on each run
        # A run is recorded as RUNNING only once it has lasted this long: a shorter run is
        # written once, with its outcome (half the writes at low load). Crash safety covers
        # runs older than this; a younger one killed with the process leaves no record.
        self.record_delay = record_delay
        # Plain counters read by /metrics at scrape time (flowserve.http.metrics).
        self.finished: Counter[str] = Counter()  # runs by final state
        self.tokens: Counter[tuple[str, str]] = Counter()  # (provider, kind) -> tokens
        # Graceful shutdown (flowserve.http.shutdown): while draining, no new run is admitted;
        # once closed, the runs left are stopped, and so is any that still starts.
        self.drain_deadline: float | None = None
        self.closed = False
        self._idle: anyio.Event | None = None  # set when the last active run ends
        self.active: dict[str, anyio.CancelScope] = {}
        # The same runs, for ownership checks before stop(). In-process only: with several
        # processes (PostgreSQL + Redis) a stop request must reach the process running the
        # run, e.g. over Redis pub/sub; not done yet.
        self.running: dict[str, Run] = {}

    @asynccontextmanager
    async def execute(
        self,
        principal: Principal,
        loaded: LoadedFlow,
        inputs: Mapping[str, str],
        user_id: str | None = None,
    ) -> AsyncIterator[Run]:
        run = Run(uuid.uuid4().hex, loaded, inputs, user_id)
        run.key_id = principal.key_id
        queued_at = utcnow()
        memory = None
        if user_id:
            memory = _BoundMemory(self.memory, loaded.org_id, loaded.flow.id, user_id)
        record = {
            "id": run.id,
            "org_id": loaded.org_id,
            "flow_id": loaded.flow.id,
            "flow_version": loaded.version,
            "key_id": principal.key_id,
            "state": RUNNING,
            "owner": self.owner,
            "inputs": dict(inputs),
            "outputs": {},
            "usage": {},
            "user_id": user_id,
            "queued_at": queued_at,
            "started_at": utcnow(),
        }
        token = run_id_var.set(run.id)
        # The RUNNING record is written beside the run, not before it: the first token does
        # not wait for the database. With a record delay it is written only if the run lasts
        # that long; until then, _record writes the whole record once. A loop timer starts
        # the write (no task waits per run); the write's task is awaited before _record.
        run.pending_record = record
        loop = asyncio.get_running_loop()
        writes: list[asyncio.Task[None]] = []

        def insert() -> None:
            write = loop.create_task(self._insert(run))
            writes.append(write)
            # A finished write is let go: a long run would otherwise hold the task and its
            # coroutine (about 1 KB) until its end.
            write.add_done_callback(writes.remove)

        insert_later = loop.call_later(self.record_delay, insert) if self.record_delay > 0 else None
        if insert_later is None:
            insert()
        try:
            with anyio.CancelScope() as scope:  # cancelled by stop()
                self.active[run.id] = scope
                self.running[run.id] = run
                try:
                    async with self.runner.start(
                        loaded.flow, inputs, memory, run.usage, run.parts
                    ) as events:
                        run._stream = events
                        if self.closed:  # slipped in after the drain: stop at once
                            self.stop(run.id, *SHUTDOWN)
                        yield run
                finally:
                    if insert_later is not None:  # ended before being recorded
                        insert_later.cancel()
                    self.active.pop(run.id, None)
                    self.running.pop(run.id, None)
                    if not self.active and self._idle is not None:
                        self._idle.set()
        finally:
            with anyio.CancelScope(shield=True):
                for write in list(writes):
                    await write
                await self._record(run)
            run.mark_recorded()
            run_id_var.reset(token)

    def stop(self, run_id: str, reason: str = "run stopped", error_type: str = "cancelled") -> bool:
        """Cancel a run of this process; it is recorded CANCELLED with ``reason`` as its error,
        which is also what its client is told last."""
        scope = self.active.get(run_id)
        if scope is None:
            return False
        run = self.running.get(run_id)
        if run is not None and run.stopped is None:
            run.stopped = (reason, error_type)
        scope.cancel()
        return True

    @property
    def draining(self) -> bool:
        return self.drain_deadline is not None

    def begin_drain(self, seconds: float) -> None:
        """Refuse new runs from now on; :meth:`drain` waits for the others."""
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + seconds

    async def drain(self, give_up: Callable[[], bool] = lambda: False) -> int:
        """Let the runs in flight finish until the drain deadline (or ``give_up()``), then stop
        the rest with the shutdown reason. Returns how many were stopped."""
        self.begin_drain(0.0)
        assert self.drain_deadline is not None
        while self.active and not give_up():
            remaining = self.drain_deadline - time.monotonic()
            if remaining <= 0:
                break
            self._idle = anyio.Event()
            with anyio.move_on_after(min(remaining, 0.1)):  # 0.1: to notice give_up()
                await self._idle.wait()
        self.closed = True
        return sum(self.stop(run_id, *SHUTDOWN) for run_id in list(self.active))

    async def _insert(self, run: Run) -> None:
        record, run.pending_record = run.pending_record, None
        if record is None:
            return
        try:
            await self.runs.start(record)
        except Exception:
            log.exception("could not record the start of run %s", record["id"])

    def _count(self, run: Run, state: str) -> None:
        self.finished[state] += 1
        nodes = run.flow.nodes
        for node_id, usage in run.usage.items():
            provider = nodes[node_id].provider or "default"
            for kind in ("prompt_tokens", "completion_tokens"):
                if usage.get(kind):
                    self.tokens[(provider, kind)] += usage[kind]

    async def _record(self, run: Run) -> None:
        error, error_type = run.stopped or ("run cancelled", "cancelled")
        final = run.final or RunFinished(
            CANCELLED, error=error, error_type=error_type, usage=run.usage
        )
        run.final = final
        self._count(run, final.state)
        outcome = {
            "state": final.state,
            "outputs": run.outputs(),
            "error": final.error,
            "error_type": final.error_type,
            "error_node": final.node_id,
            "usage": run.usage,
            "first_token_at": run.first_token_at,
            "finished_at": utcnow(),
        }
        try:
            if run.pending_record is not None:
                await self.runs.start({**run.pending_record, **outcome})
            else:
                await self.runs.finish(run.id, **outcome)
        except Exception:
            log.exception("could not record the end of run %s", run.id)
