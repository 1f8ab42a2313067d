"""Who reads a run, and what happens when the last reader leaves (contract 2.5).

A streamed run's readers are the client that started it and any that resumed it. When the
last one leaves, the run is not cancelled at once: it is kept ``grace`` seconds for a client
to come back (its events go on into its log meanwhile), then stopped with the ``LEFT`` reason,
unless a client on another process follows it (Redis: ``watched``), in which case it is
asked again a grace later. A loop timer per waiting run, no task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowserve.runs.run import Run

Watched = Callable[[str], Awaitable[bool]]


class Readers:
    __slots__ = ("_count", "_run", "_timer", "_watched")

    def __init__(self, run: Run, watched: Watched | None) -> None:
        self._run = run
        self._watched = watched
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None

    def attach(self) -> None:
        self._count += 1
        self.cancel()

    def detach(self, grace: float) -> None:
        self._count -= 1
        if self._count > 0 or self._run.ended:
            return
        if grace <= 0:
            self._run.stop_left()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(grace, self._over, grace)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _over(self, grace: float) -> None:
        self._timer = None
        if self._count > 0 or self._run.ended:
            return
        if self._watched is None:
            self._run.stop_left()
            return
        self._run.track(asyncio.get_running_loop().create_task(self._ask(self._watched, grace)))

    async def _ask(self, watched: Watched, grace: float) -> None:
        try:
            followed = await watched(self._run.id)
        except Exception:
            followed = False  # Redis unreachable: nobody can be following it from elsewhere
        if self._count > 0 or self._run.ended:
            return
        if not followed:
            self._run.stop_left()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(grace, self._over, grace)
