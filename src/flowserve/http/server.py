"""``flowserve serve``: uvicorn, with a header timeout, a graceful drain and the collector
tuned for a long-lived server. Only the serve command imports this module.

**Garbage collection.** A stream's objects are freed by reference counting (no cycles on the
stream path; tests/test_no_cycles.py checks), so a full collection finds little and only stops
the event loop: 50-65 ms each with 100 paced streams open (about 9,000 tokens/s) before
start-up was frozen out of the collector's generations, 5-10 ms after; the per-token delay
p99 there went from about 36 to 7 ms. :func:`tune_gc` freezes what start-up made and makes
full collections ten times rarer. It is the server's choice, made by ``flowserve serve``
once the app has started; a program that embeds the app keeps its own collector settings.

**Slow clients.** :class:`HeaderTimeoutProtocol` is uvicorn's httptools protocol with a time
limit on receiving request headers. uvicorn (0.54) has none: ``timeout_keep_alive`` only
covers a kept-alive connection that sends nothing, and any byte received cancels it. A
client sending one header byte a second (slowloris) therefore holds its socket forever, on a
fresh connection as on a kept-alive one between requests. uvicorn offers no hook for this, so
it is written by hand here: a subclass overriding five callbacks around one timer handle per
connection (no task, nothing per byte).

The clock (``header_timeout``) starts when the connection waits for a request (on opening,
and when a kept-alive response is finished) and starts again at the first byte of the
request. It stops when the request's headers are complete: reading a body and writing a
response or a stream are not timed. When it runs out:

- with part of a request received: ``408`` and the connection is closed;
- with no request begun (nothing, or only blank lines): closed without an answer, as uvicorn's
  keep-alive timeout does;
- behind a response still being written (a pipelined request arriving slowly): that response
  finishes, then the connection closes.

**Graceful shutdown** drains the runs in flight, then stops the rest with a last message.
uvicorn alone, on SIGTERM, closes its listening socket, waits for open connections (up to
``timeout_graceful_shutdown``) and then cancels their tasks: a streaming client is cut off
mid-answer without being told why, and the application's lifespan shutdown only runs after
that. :class:`DrainingServer` puts a drain in front of uvicorn's own shutdown:

1. At the signal, new runs are refused: the edge answers the routes that start runs with 503
   and ``Retry-After`` (the socket still accepts during the drain, so a client or load
   balancer learns why) and ``/healthz`` answers 503, so a load balancer takes the instance
   out.
2. Runs in flight may finish for up to ``drain_seconds``; the drain ends as soon as none is
   left.
3. The runs still going are stopped: each is recorded CANCELLED with its partial outputs, and
   its client receives a last message, ``{"error": "server shutting down", "error_type":
   "shutdown", …}`` on the legacy stream, an envelope with state CANCELLED on v0.
4. uvicorn's shutdown follows: connections close once their last message is written (at most
   ``GRACE`` seconds), then the lifespan ends, which deregisters this instance.

A second Ctrl+C skips what is left of the drain.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from flowserve.config import Settings
from flowserve.http.app import create_app
from flowserve.runs.service import RunService

log = logging.getLogger("flowserve.http")

# After the drain, how long connections get to send their last message and close.
GRACE = 5


def _runs(app: Any) -> RunService | None:
    state = getattr(getattr(app, "state", None), "flowserve", None)
    return state.runs if state is not None else None


def tune_gc() -> None:
    """Freeze what start-up made and make full collections rarer (see the module doc)."""
    gc.collect()
    gc.freeze()
    # Frozen start-up no longer counts as long-lived, so the default (a full collection
    # after every 10 middle ones) ran one every few seconds; this makes it ten times rarer.
    gc.set_threshold(700, 10, 100)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    request_timeout_response: bytes = b""  # set by protocol_class

    _header_timer: asyncio.TimerHandle | None = None
    _in_request = False  # part of a request line or headers received

    def _start_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _stop_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # close once the response in progress is written
            return
        if self._in_request:
            self.transport.write(self.request_timeout_response)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_request = True
        self._start_clock()

    def on_headers_complete(self) -> None:
        self._stop_clock()
        self._in_request = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn armed its keep-alive timer: idle, waiting for the next request.
        if self.timeout_keep_alive_task is not None and not self.transport.is_closing():
            self._start_clock()


def protocol_class(header_timeout: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class to give ``uvicorn.Config(http=…)``."""
    body = orjson.dumps({"detail": f"request headers not received within {header_timeout:g}s"})
    response = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )
    attributes: dict[str, Any] = {
        "header_timeout": header_timeout,
        "request_timeout_response": response,
    }
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), attributes)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above run between the signal and its own shutdown.
    ``on_started`` is called once the app has started (a worker tells its supervisor)."""

    def __init__(
        self,
        config: uvicorn.Config,
        drain_seconds: float,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.on_started = on_started

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler: only set the flag, so the very next request sees it.
        runs = _runs(self.config.app)
        if runs is not None:
            runs.begin_drain(self.drain_seconds)
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # the app's lifespan has run: modules, models, state all made
            tune_gc()
            if self.on_started is not None:
                self.on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        runs = _runs(self.config.app)
        if runs is not None:
            if runs.active:
                log.info(
                    "shutting down: %d run(s) in flight, draining for up to %gs",
                    len(runs.active),
                    self.drain_seconds,
                )
            stopped = await runs.drain(lambda: self.force_exit)
            if stopped:
                log.warning("drain over: stopped %d run(s)", stopped)
        await super().shutdown(sockets)


def serve(
    settings: Settings,
    sockets: list[socket.socket] | None = None,
    on_started: Callable[[], None] | None = None,
) -> bool:
    """Serve until a signal (and the drain) ends it, on ``settings.host``/``port`` or on
    ``sockets`` already bound (a worker's); False if the app failed to start."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol_class(settings.header_timeout),  # httptools, with a header timeout
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACE,  # after the drain (settings.drain_seconds)
    )
    server = DrainingServer(config, settings.drain_seconds, on_started)
    server.run(sockets)
    return server.started
