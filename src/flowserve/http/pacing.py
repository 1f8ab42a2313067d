"""Fairness for open streams when many new ones arrive at once.

Setting a stream up (request handling, the run, the provider request) is the costly part
of serving it: about half a millisecond of event-loop time, against microseconds per token
relayed. When a hundred requests arrive together, asyncio runs every ready step before it
looks at sockets again, so a burst of set-ups used to sit between the open streams and their
next tokens for tens of milliseconds (bench/RESULTS.md, per-token delay at c=100).

The gate (an asyncio.Semaphore: FIFO, no barging past waiters, a woken waiter runs on a later
loop turn) lets a few set-ups run at a time; the rest wait their turn in arrival order, so
the sockets are read between set-ups. Bursts are served at the same total rate, and tokens of
the streams already open keep flowing. The gate covers starting the run, from after the
request is admitted (key, flow, body: what can wait on a client or the database stays
outside, so a slow client or a slow query holds no slot) until the run's first loop turn has
sent its upstream request. Uncontended it is a counter, nothing more.
"""

from __future__ import annotations

import asyncio


class SetupGate:
    def __init__(self, width: int) -> None:
        self._slots = asyncio.Semaphore(width)

    async def enter(self) -> SetupPass:
        await self._slots.acquire()
        return SetupPass(self._slots)


class SetupPass:
    """One request's slot; calling it gives the slot back (once, whoever calls first)."""

    __slots__ = ("_slots",)

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots: asyncio.Semaphore | None = slots

    def __call__(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release()
