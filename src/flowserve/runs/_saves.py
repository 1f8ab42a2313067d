"""A running run's outputs, saved every ``interval`` seconds once it is recorded RUNNING.

A process killed mid-run cannot record its runs' ends: the survivor that finds such a run
marks it FAILED ("interrupted") and keeps the outputs saved here last, so what its client saw
stays in the record (up to one interval of it; with Redis, all of it, from the event log:
``RunService.recover``). One loop timer per run, a write through the group commit each time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowserve.runs.run import Run

log = logging.getLogger("flowserve.runs")


class Saves:
    __slots__ = ("_interval", "_run", "_timer")

    def __init__(self, run: Run, interval: float) -> None:
        self._run = run
        self._interval = interval
        self._timer: asyncio.TimerHandle | None = None

    def soon(self) -> None:
        if self._interval > 0 and not self._run.ended:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._due)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        if not self._run.ended:
            self._run.track(asyncio.get_running_loop().create_task(self._write()))

    async def _write(self) -> None:
        run = self._run
        try:
            await run._service.store.save_progress(run.id, run.outputs(), dict(run.usage))
        except Exception:
            log.warning("could not save the outputs so far of run %s", run.id)
        self.soon()
