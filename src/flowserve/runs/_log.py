"""A run's event log: every event it produced, in order, numbered from 1, so that a client
that lost its connection can resume after the last event it saw (contract 2.5).

The log is the run's own list, appended as its consumer observes each event (one list
append per token, and a wake-up only while someone follows), ending with the run's final
word. When the processes share Redis, what a loop turn appended is also handed to the
cluster's :class:`~flowserve.cluster.base.EventLog` in one batch, so a client can resume on
another process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from flowserve.cluster.base import EventLog
from flowserve.events import Event


class RunLog:
    __slots__ = ("_flush", "_sent", "_sink", "_waiters", "ended", "events")

    def __init__(self, sink: EventLog | None = None) -> None:
        self.events: list[Event] = []
        self.ended = False  # the final event is in
        self._waiters: list[asyncio.Future[None]] = []
        self._sink = sink
        self._sent = 0  # events handed to the sink
        self._flush: asyncio.Handle | None = None

    def __len__(self) -> int:
        return len(self.events)

    def append(self, event: Event, final: bool = False) -> bool:
        """Add an event; ``final``: the run's last, after which nothing more is kept. Whether
        it was kept."""
        if self.ended:
            return False
        self.events.append(event)
        self.ended = final
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()
        if self._sink is not None and self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)
        return True

    def flush(self) -> None:
        """Hand what was appended since the last flush to the sink, as one batch."""
        self._flush = None
        if self._sink is not None and self._sent < len(self.events):
            batch = self.events[self._sent :]
            self._sent = len(self.events)
            self._sink.append(batch)

    async def close(self) -> None:
        """The run is over and recorded: the sink keeps the log for its retention time."""
        if self._flush is not None:
            self._flush.cancel()
        self.flush()
        if self._sink is not None:
            await self._sink.close()

    async def follow(self, after: int) -> AsyncIterator[tuple[int, list[Event]]]:
        """The events after the first ``after``, in batches, each with the number of the last
        event in it; until the final event."""
        position = after
        while True:
            events = self.events
            if len(events) > position:
                batch = events[position:]
                position = len(events)
                yield position, batch
                continue
            if self.ended:
                return
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
