"""The runs of this process: made here, found here to be stopped, drained at shutdown.

Each run owns its lifecycle (:mod:`flowserve.runs.run`); this is what they share: the
runner, the stores they write to, the counters they add to, and which of them are active.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager

import anyio

from flowserve.auth import Principal
from flowserve.cluster.base import Cluster, RunInfo
from flowserve.flows.service import LoadedFlow
from flowserve.runs.run import SHUTDOWN, Run, RunMetrics
from flowserve.runs.runner import Runner
from flowserve.store.memory import MemoryStore
from flowserve.store.runs import RunStore

# How often a drain looks again whether it was told to give up.
DRAIN_POLL = 0.1
# Ended runs kept in memory for clients that resume them (the newest, for ``retention``).
MAX_RECENT = 1000


class RunService:
    def __init__(
        self,
        store: RunStore,
        memory: MemoryStore,
        runner: Runner,
        owner: str | None = None,
        record_delay: float = 0.0,
        save_interval: float = 0.0,
        retention: float = 60.0,
        cluster: Cluster | None = None,
    ) -> None:
        self.store = store
        self.memory = memory
        self.runner = runner
        self.owner = owner  # this process's instance id, recorded on each run
        # A run is recorded as RUNNING only once it has lasted this long: a shorter run is
        # written once, with its outcome (half the writes at low load). Crash safety covers
        # runs older than this; a younger one killed with the process leaves no record.
        self.record_delay = record_delay
        # A RUNNING run's outputs are saved this often (0: never), for its record to keep
        # them if the process dies mid-run.
        self.save_interval = save_interval
        # Streamed runs stay findable for resuming this long after their end (contract 2.5).
        self.retention = retention
        self.recent: OrderedDict[str, tuple[float, Run]] = OrderedDict()
        # Shared with other processes (Redis): where runs' events go, and whether another
        # process follows a run whose clients here left. None: this process alone.
        self.cluster = cluster
        self.watched: Callable[[str], Awaitable[bool]] | None = None
        if cluster is not None and cluster.shared:
            self.watched = cluster.watched
        self.metrics = RunMetrics()
        self.active: dict[str, Run] = {}  # in this process, by id
        # Graceful shutdown (flowserve.http.server): while draining, no new run is admitted;
        # once closed, the runs left are stopped, and so is any that still starts.
        self.drain_deadline: float | None = None
        self.closed = False
        self._idle: anyio.Event | None = None  # set when the last active run ends

    def ended(self, run: Run) -> None:
        """Called by a run as it ends: it is no longer active (a streamed one stays
        findable for ``retention``)."""
        self.active.pop(run.id, None)
        if run.resumable and self.retention > 0:
            now = time.monotonic()
            self.recent[run.id] = (now + self.retention, run)
            while self.recent:
                oldest_id, (expires, _) = next(iter(self.recent.items()))
                if expires > now and len(self.recent) <= MAX_RECENT:
                    break
                del self.recent[oldest_id]
        if not self.active and self._idle is not None:
            self._idle.set()

    def find(self, run_id: str) -> Run | None:
        """A run of this process that is running or ended less than ``retention`` ago."""
        run = self.active.get(run_id)
        if run is not None:
            return run
        kept = self.recent.get(run_id)
        if kept is None or kept[0] <= time.monotonic():
            return None
        return kept[1]

    def create(
        self,
        principal: Principal,
        loaded: LoadedFlow,
        inputs: Mapping[str, str],
        user_id: str | None = None,
        resumable: bool = False,
    ) -> Run:
        """A queued run; it starts when its ``session()`` is entered. A ``resumable`` one
        (streamed) can be re-attached to by a client that lost its connection."""
        run_id = uuid.uuid4().hex
        sink = None
        if self.cluster is not None and self.cluster.shared:
            sink = self.cluster.open_log(
                RunInfo(
                    run_id=run_id,
                    owner=self.owner or "",
                    org_id=loaded.org_id,
                    flow_id=loaded.flow.id,
                    flow_version=loaded.version,
                    key_id=principal.key_id,
                    user_id=user_id,
                    inputs=dict(inputs),
                )
            )
        run = Run(self, loaded, inputs, user_id, principal.key_id, sink=sink, run_id=run_id)
        run.resumable = resumable
        return run

    def start(
        self,
        principal: Principal,
        loaded: LoadedFlow,
        inputs: Mapping[str, str],
        user_id: str | None = None,
    ) -> AbstractAsyncContextManager[Run]:
        """``async with runs.start(...) as run``: create the run and run it for the block."""
        return self.create(principal, loaded, inputs, user_id).session()

    def replica(self, info: RunInfo, loaded: LoadedFlow) -> Run:
        """A copy of a run another process owns: never run, brought up to date by
        :meth:`Run.replay` with the events of its log (for resuming it, or recording it)."""
        run = Run(self, loaded, info.inputs, info.user_id, info.key_id, run_id=info.run_id)
        run.begin_replica()
        return run

    async def recover(
        self,
        run_ids: list[str],
        load_flow: Callable[[str, str, int], Awaitable[LoadedFlow]],
    ) -> None:
        """Complete the records of runs a dead process owned (just marked FAILED,
        "interrupted") with what they had streamed, read back from their event logs in the
        cluster: nothing a client saw is missing from the record. Without a shared cluster
        the record keeps the outputs its run last saved (``save_interval``)."""
        cluster = self.cluster
        if cluster is None or not cluster.shared:
            return
        for run_id in run_ids:
            info = await cluster.lookup(run_id)
            if info is None:
                continue
            replica = self.replica(
                info, await load_flow(info.org_id, info.flow_id, info.flow_version)
            )
            position = 0
            while True:
                events, _ = await cluster.read(run_id, position, wait=0)
                if not events:
                    break
                for _seq, event in events:
                    replica.replay(event)
                position = events[-1][0]
            await self.store.save_progress(run_id, replica.outputs(), dict(replica.usage))

    def stop(self, run_id: str, reason: str = "run stopped", error_type: str = "cancelled") -> bool:
        """Stop a run of this process (see :meth:`Run.stop`); False if none is active."""
        run = self.active.get(run_id)
        return run is not None and run.stop(reason, error_type)

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
            with anyio.move_on_after(min(remaining, DRAIN_POLL)):
                await self._idle.wait()
        self.closed = True
        return sum(self.stop(run_id, *SHUTDOWN) for run_id in list(self.active))
