"""Helpers the provider tests share: building requests, consuming and cancelling streams."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from flowserve.providers._http1 import Response
from flowserve.providers.base import LLMRequest, Message

MULTIBYTE = ["h\u00e9llo", " \u65e5\u672c\u8a9e", " \U0001f389"]  # "héllo 日本語 🎉"


def make_request(model: str = "test-model", **fields: Any) -> LLMRequest:
    fields.setdefault("messages", [Message("user", "Say hello")])
    return LLMRequest(model=model, **fields)


async def body_of(answer: Response) -> bytes:
    """The whole body of an _http1 response, which is closed after."""
    try:
        return b"".join([piece async for piece in answer.chunks()])
    finally:
        answer.close()


async def collect(chunks: AsyncIterator[str]) -> list[str]:
    return [chunk async for chunk in chunks]


async def cancel_after(chunks: AsyncIterator[str], count: int) -> tuple[list[str], float]:
    """Consume ``chunks`` in a task and cancel that task once ``count`` chunks arrived.

    Returns the chunks seen and the ``time.monotonic()`` of the cancellation."""
    seen: list[str] = []
    reached = anyio.Event()

    async def consume() -> None:
        async for chunk in chunks:
            seen.append(chunk)
            if len(seen) == count:
                reached.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        with anyio.fail_after(5):
            await reached.wait()
        await anyio.sleep(0.01)  # let the consumer go back to waiting on the upstream
        cancelled_at = time.monotonic()
        tg.cancel_scope.cancel()
    return seen, cancelled_at


async def wait_until(predicate: Callable[[], Any], within: float = 2.0) -> None:
    """Poll ``predicate``: it reads what the fake server's thread records."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - the value is written by another thread
            await anyio.sleep(0.002)
