"""uvicorn's httptools protocol, with a time limit on receiving request headers.

uvicorn (0.54) has none: ``timeout_keep_alive`` only covers a kept-alive connection that sends
nothing, and any byte received cancels it. A client sending one header byte a second
(slowloris) therefore holds its socket forever, on a fresh connection as on a kept-alive one
between requests. uvicorn offers no hook for this, so it is written by hand here: a subclass
overriding five callbacks around one timer handle per connection (no task, nothing per byte).

The clock (``header_timeout``) starts when the connection waits for a request (on opening,
and when a kept-alive response is finished) and starts again at the first byte of the
request. It stops when the request's headers are complete: reading a body and writing a
response or a stream are not timed. When it runs out:

- with part of a request received: ``408`` and the connection is closed;
- with no request begun (nothing, or only blank lines): closed without an answer, as uvicorn's
  keep-alive timeout does;
- behind a response still being written (a pipelined request arriving slowly): that response
  finishes, then the connection closes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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
