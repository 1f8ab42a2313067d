"""The run's event channel: node tasks put events, the consumer takes them.

Written on asyncio.Queue rather than anyio's memory object stream because this is the
per-token path: anyio's ``receive()`` always yields to the event loop and builds an Event when
it has to wait (both showed in the relay profile), while ``asyncio.Queue.get()`` returns at
once when an event is waiting. flowserve runs on asyncio (uvicorn) only.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()


class Channel(Generic[T]):
    """Unbounded, one consumer. ``close()`` ends the iteration after what was sent."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()

    def send_nowait(self, item: T) -> None:
        self._queue.put_nowait(item)

    def close(self) -> None:
        self._queue.put_nowait(_END)

    def drain(self) -> list[T]:
        """Everything already waiting, without blocking (used to coalesce frames)."""
        queue = self._queue
        items: list[T] = []
        while queue.qsize():
            item = queue.get_nowait()
            if item is _END:
                queue.put_nowait(_END)  # keep the end for the iterator
                break
            items.append(item)  # type: ignore[arg-type]
        return items

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        return item  # type: ignore[return-value]
