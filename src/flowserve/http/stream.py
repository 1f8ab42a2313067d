"""The streaming response: one run relayed to one client.

Written as a raw ASGI response rather than Starlette's StreamingResponse because we need three
things it does not do together: (1) adaptive coalescing — write each batch as soon as the
socket takes it, and while a write is blocked on a slow client let events pile up and merge
them into the next frame; (2) a keepalive comment line when nothing was written for a
while; (3) a task listening for ``http.disconnect`` that cancels the run, instead of polling
``request.is_disconnected()`` per event. (2) and (3) are the same task.

That task is a plain asyncio task, not an anyio task group: anyio's ``start_soon`` wraps each
child in a handle with its own cancel scope, event and coroutine frame, a visible share of the
time to first token and of the memory a held stream costs. The relay itself runs in one anyio
cancel scope, so a disconnect cancels it the way ``stop`` does, and shielded clean-up (the run
record) stays shielded.

**Pacing.** Setting a stream up (request handling, the run, the provider request) is the
costly part of serving it: about half a millisecond of event-loop time, against microseconds
per token relayed. When a hundred requests arrive together, asyncio runs every ready step
before it looks at sockets again, so a burst of set-ups used to sit between the open streams
and their next tokens for tens of milliseconds (bench/RESULTS.md, per-token delay at c=100).
The :class:`SetupGate` (an asyncio.Semaphore: FIFO, no barging past waiters, a woken waiter
runs on a later loop turn) lets a few set-ups run at a time; the rest wait their turn in
arrival order, so the sockets are read between set-ups. It covers starting the run, from
after the request is admitted (key, flow, body: what can wait on a client or the database
stays outside, so a slow client or a slow query holds no slot) until the run's first loop
turn has sent its upstream request. Uncontended it is a counter, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flowserve.http.frames import Encoder
from flowserve.runs.run import Run

log = logging.getLogger("flowserve.http")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
NDJSON_HEADERS = [
    (b"content-type", b"application/x-ndjson"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
KEEPALIVE = b": keepalive\n"


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


class RunStreamResponse(Response):
    """A Response only so FastAPI passes it through; it renders nothing up front."""

    def __init__(
        self,
        run: Run,
        encoder: Encoder,
        sse: bool,
        keepalive_interval: float,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        coalesce: bool = True,
        gate: SetupGate | None = None,
        grace: float = 0.0,
    ) -> None:
        self.run = run
        self.encoder = encoder
        self.sse = sse
        self.keepalive_interval = keepalive_interval
        self.coalesce = coalesce
        self.gate = gate
        self._setup_done: SetupPass | None = None
        self.status_code = 200
        self.background = None
        self.raw_headers = (SSE_HEADERS if sse else NDJSON_HEADERS) + (extra_headers or [])
        self._lock = asyncio.Lock()
        self._last_write = 0.0
        self._send: Send | None = None
        self._started = False
        self._cancel: anyio.CancelScope | None = None  # around the relay; the watcher's to use
        self._watcher: asyncio.Task[None] | None = None
        # A client that leaves does not end the run at once: it stays ``grace`` seconds for
        # the client to resume it (contract 2.5); meanwhile this relay goes on taking its
        # events (into the run's log) and writes nothing.
        self.grace = grace
        self._gone = False
        self._attached = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # /metrics' flowserve_streams_open: from here to the end, however it ends (a client
        # that leaves cancels the relay, and this frame still unwinds through the finally).
        metrics = self.run._service.metrics
        metrics.streams_open += 1
        try:
            await self._serve(send, receive)
        finally:
            metrics.streams_open -= 1

    async def _serve(self, send: Send, receive: Receive) -> None:
        self._send = send
        self._receive = receive
        if self.gate is not None:  # wait for our turn to start (SetupGate, above)
            self._setup_done = await self.gate.enter()
        self._last_write = time.monotonic()
        try:
            with anyio.CancelScope() as self._cancel:
                await self._relay()
        finally:
            if self._setup_done is not None:
                self._setup_done()  # no-op if the relay already gave the slot back
            if self._watcher is not None:
                self._watcher.cancel()
        await self._start_response()  # if the run never started
        # The client may be gone; ending the body then is harmless.
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _start_response(self) -> None:
        if not self._started:
            self._started = True
            assert self._send is not None
            await self._send(
                {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            )

    async def _write(self, data: bytes) -> None:
        if self._gone:
            return
        assert self._send is not None
        async with self._lock:  # asyncio.Lock: no loop round-trip when uncontended
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        self._last_write = time.monotonic()

    async def _relay(self) -> None:
        run, encoder = self.run, self.encoder
        async with run.session():
            # One loop turn for the run's first steps before we write anything: its upstream
            # request is then on its way while the response head and first frame go out.
            await asyncio.sleep(0)
            if self._setup_done is not None:  # set-up over: let the next stream's begin
                self._setup_done()
            run.attach()
            self._attached = True
            self._watch_soon()
            await self._start_response()
            await self._write(encoder.first())
            receive = run.receive_nowait
            coalesce = self.coalesce
            log = run.log
            async for event in run.events():
                batch = [event]
                if coalesce:  # whatever arrived while we were writing goes into this frame
                    batch.extend(receive())
                encoder.position = len(log)  # the events observed so far: this frame's id
                data = encoder.batch(batch)
                if data:
                    await self._write(data)
                if encoder.finished:
                    return
        # Only reached when the run was stopped from outside (stop request, shutdown):
        # it was recorded CANCELLED with the reason; tell the client before ending.
        if run.final is not None and not encoder.finished:
            encoder.position = len(run.log)
            await self._write(encoder.batch([run.final]) or b"")

    def _watch_soon(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(self._receive))

    async def _watch(self, receive: Receive) -> None:
        """Wait for ``http.disconnect`` and cancel the run when it comes; meanwhile (SSE
        only) write a keepalive comment whenever nothing was written for the interval. One
        task for both: a second task per stream cost memory and a wake-up per interval.

        Cancelled by ``__call__`` when the response has ended, it ends quietly: a task that
        ends on CancelledError keeps the error, whose traceback's frames hold the response,
        and through it the run and everything else of the stream, in a reference cycle. Only
        the full collection frees such cycles; with each stream's objects left to it, it ran
        every few seconds at 100 streams and stopped the event loop for ~30 ms each time."""
        try:
            await self._watch_until_gone(receive)
        except asyncio.CancelledError:
            return

    async def _watch_until_gone(self, receive: Receive) -> None:
        interval = self.keepalive_interval if self.sse else math.inf
        while True:
            quiet = time.monotonic() - self._last_write
            if quiet >= interval * 0.99:
                await self._start_response()  # in case the run has not had its first turn
                await self._write(KEEPALIVE)
                continue
            message: Any = None
            try:
                # None for NDJSON (no keepalive): no timer at all while the stream is open.
                async with asyncio.timeout(None if interval == math.inf else interval - quiet):
                    message = await receive()
            except TimeoutError:
                pass
            if message is not None and message["type"] == "http.disconnect":
                self._left()
                return

    def _left(self) -> None:
        """The client is gone: write nothing more, and let the run know (it is cancelled
        now, or after the grace if no client resumes it)."""
        run_id = self.run.id
        self._gone = True
        if self.grace > 0:
            log.info(
                "client disconnected; run %s kept %.3gs for it to resume",
                run_id,
                self.grace,
                extra={"run_id": run_id},
            )
        else:
            log.info("client disconnected; cancelling run %s", run_id, extra={"run_id": run_id})
        if self._attached:
            self._attached = False
            self.run.detach(self.grace)
        if self.grace <= 0 or not self._attached_run:
            assert self._cancel is not None
            self._cancel.cancel()

    # Whether the relay drives the run (the stream that started it): a resumed stream only
    # follows, and ends when its client leaves.
    _attached_run = True
