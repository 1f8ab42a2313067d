"""The run's event channel: node tasks put events, the consumer takes them.

Written by hand because this is the per-token path and one exists per open stream. anyio's
memory object streams always yield to the event loop in ``receive()`` and build an Event when
they wait; ``asyncio.Queue`` returns at once when an item is waiting but carries three deques,
an Event and a loop check per call (3 KB per stream, and a visible share of the paced-stream
profile). This is one list and, only while the consumer waits, one future: a list rather than a
deque because an empty deque still holds a 64-slot block (760 B against 56 B, paid by every
held stream), and the consumer takes everything waiting at once, so the front is seldom
popped from a long list. flowserve runs on asyncio (uvicorn) only.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()


class Channel(Generic[T]):
    """Unbounded, one consumer. ``close()`` ends the iteration after what was sent."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[object] = []
        self._waiter: asyncio.Future[None] | None = None

    def send_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self.send_nowait(_END)  # type: ignore[arg-type]

    def drain(self) -> list[T]:
        """Everything already waiting, without blocking (used to coalesce frames)."""
        items = self._items
        if not items:
            return []
        if items[-1] is _END:
            out, self._items = items[:-1], [_END]
        else:
            out, self._items = items, []
        return out  # type: ignore[return-value]

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items = self._items
        if items[0] is _END:
            raise StopAsyncIteration  # the end stays queued: iterating again ends again
        return items.pop(0)  # type: ignore[return-value]
