"""The runs of this process: made here, found here to be stopped, drained at shutdown.

Each run owns its lifecycle (:mod:`flowserve.runs.run`); this is what they share: the
runner, the stores they write to, the counters they add to, and which of them are active.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager

import anyio

from flowserve.auth import Principal
from flowserve.flows.service import LoadedFlow
from flowserve.runs.run import SHUTDOWN, Run, RunMetrics
from flowserve.runs.runner import Runner
from flowserve.store.memory import MemoryStore
from flowserve.store.runs import RunStore

# How often a drain looks again whether it was told to give up.
DRAIN_POLL = 0.1


class RunService:
    def __init__(
        self,
        store: RunStore,
        memory: MemoryStore,
        runner: Runner,
        owner: str | None = None,
        record_delay: float = 0.0,
    ) -> None:
        self.store = store
        self.memory = memory
        self.runner = runner
        self.owner = owner  # this process's instance id, recorded on each run
        # A run is recorded as RUNNING only once it has lasted this long: a shorter run is
        # written once, with its outcome (half the writes at low load). Crash safety covers
        # runs older than this; a younger one killed with the process leaves no record.
        self.record_delay = record_delay
        self.metrics = RunMetrics()
        self.active: dict[str, Run] = {}  # in this process, by id
        # Graceful shutdown (flowserve.http.server): while draining, no new run is admitted;
        # once closed, the runs left are stopped, and so is any that still starts.
        self.drain_deadline: float | None = None
        self.closed = False
        self._idle: anyio.Event | None = None  # set when the last active run ends

    def ended(self, run: Run) -> None:
        """Called by a run as it ends: it is no longer active."""
        self.active.pop(run.id, None)
        if not self.active and self._idle is not None:
            self._idle.set()

    def create(
        self,
        principal: Principal,
        loaded: LoadedFlow,
        inputs: Mapping[str, str],
        user_id: str | None = None,
    ) -> Run:
        """A queued run; it starts when its ``session()`` is entered."""
        return Run(self, loaded, inputs, user_id, principal.key_id)

    def start(
        self,
        principal: Principal,
        loaded: LoadedFlow,
        inputs: Mapping[str, str],
        user_id: str | None = None,
    ) -> AbstractAsyncContextManager[Run]:
        """``async with runs.start(...) as run``: create the run and run it for the block."""
        return self.create(principal, loaded, inputs, user_id).session()

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
