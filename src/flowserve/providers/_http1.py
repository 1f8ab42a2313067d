"""A small HTTP/1.1 client for one job: POST a body and stream the response back, over kept-
alive connections. The openai-compatible adapter's transport for direct connections.

Written by hand because the relay's time to first token is mostly transport. Measured here,
sequential 3-token streams from bench/fake_upstream.py, CPU per request: the openai SDK
1.1 ms, httpx 0.74 ms (a cancel scope per socket read, a liveness check per pooled
connection), this client 0.07 ms; aiohttp, tried in between, still spent 0.25-0.55 ms of the
relay's wall time between sending and having the response head. This client writes one
pre-encoded block and parses the answer with httptools (the C parser uvicorn uses);
``bench/upstream_clients.py`` repeats the measurement. It does only what that job needs:
``http`` and ``https`` (asyncio's TLS; the system's CA store unless the pool is given an SSL
context), ``Content-Length``, chunked and close-delimited bodies, keep-alive. A proxy is not
its business: the adapter sends proxied requests through httpx.

A connection goes back to the pool only when its response was read to the end; one that was
abandoned mid-body (the consumer was cancelled) is closed, which is what stops the upstream
generating. A POST is sent again, on a new connection, only when it provably never left: its
kept-alive connection was found closed before anything was written, or the first write failed
outright. Once a byte of it may have reached the server, a failure is raised, not resent: the
server may have read it and started (and billed) a generation.

Nothing the upstream sends is held without a bound: the response head (status line and header
fields, and likewise trailers) is cut at 64 KiB and 100 fields, the body pauses reading from
the socket at 1 MiB buffered. Going out, each header name must be a token and no value may
hold CR, LF or NUL, checked once per :class:`Target`: a flow's URL or a key carrying them
would otherwise write headers (or a second request) of its own.
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
from collections.abc import AsyncIterator
from functools import cache
from urllib.parse import urlsplit

import anyio
import httptools

from flowserve.errors import ProviderBadRequestError, ProviderProtocolError

_PAUSE_AT = 1 << 20  # body bytes buffered before reading from the socket pauses
_MAX_HEAD = 64 * 1024  # bytes of one response's head (or trailers) held before it is refused
_MAX_FIELDS = 100  # header fields (trailers included) in one response
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # what a header name may be (RFC 9110)
_BREAKS_VALUE = re.compile(r"[\r\n\0]")  # would end a header value, or a C parser's string
_BREAKS_TARGET = re.compile(r"[^!-~]")  # a space or control splits the request line or Host
_HEADER_LINES = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\0]*\r\n)+")


class ConnectFailed(OSError):
    """No connection could be made (refused, unreachable, TLS handshake failed, timed out)."""


class ConnectionLost(OSError):
    """The connection closed, or the server sent something that is not HTTP, mid-response."""


@cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


class Target:
    """Where requests go: the origin, and the request head every POST to this URL shares."""

    __slots__ = ("head", "host", "port", "tls")

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        if self.port != (443 if self.tls else 80):
            host = f"{host}:{self.port}"
        if _BREAKS_TARGET.search(path) or _BREAKS_TARGET.search(host):
            raise ProviderBadRequestError(
                "the upstream URL has a space, control or non-ASCII character: percent-encode it"
            )
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
        lines += [_header_line(name, value) for name, value in headers.items()]
        self.head = ("\r\n".join(lines) + "\r\n").encode("latin-1")


def _header_line(name: str, value: str) -> str:
    """``name: value``, refused if it could break out of its line. The value is never
    quoted in the error: it is often the API key."""
    if not _TOKEN.fullmatch(name):
        raise ProviderBadRequestError(f"request header name {name!r} is not a valid token")
    if _BREAKS_VALUE.search(value):
        raise ProviderBadRequestError(
            f"request header {name} contains CR, LF or NUL (check the key or setting it "
            "comes from): refused, as it could inject headers"
        )
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ProviderBadRequestError(
            f"request header {name} contains characters outside Latin-1"
        ) from None
    return f"{name}: {value}"


class Response:
    """The status and headers, then the body as it arrives."""

    __slots__ = ("_conn", "_pool", "headers", "status")

    def __init__(self, conn: _Connection, pool: Pool) -> None:
        self._conn, self._pool = conn, pool
        self.status = conn.status
        self.headers = conn.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.body:
                chunk = conn.body.pop(0)
                conn.buffered -= len(chunk)
                if conn.paused and conn.buffered < _PAUSE_AT // 2:
                    conn.paused = False
                    conn.transport.resume_reading()
                yield chunk
            elif conn.complete:
                return
            elif conn.lost is not None:
                raise conn.lost_as(conn.lost)
            else:
                await conn.wait()

    async def read(self, limit: int) -> bytes:
        """The body up to ``limit`` bytes (for error answers)."""
        data = b""
        async for chunk in self.chunks():
            data += chunk
            if len(data) >= limit:
                break
        return data[:limit]

    def close(self) -> None:
        """Give the connection back to the pool if the whole body was read, else close it."""
        conn = self._conn
        if conn.complete and conn.keep_alive and conn.lost is None and not conn.body:
            self._pool.give_back(conn)
        else:
            conn.close()


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; httptools calls the ``on_*`` methods as bytes arrive."""

    lost_as: type[Exception] = ConnectionLost  # what ``lost`` is raised as (see ``fail``)

    def __init__(self, pool: Pool, origin: tuple[str, int, bool]) -> None:
        self.pool, self.origin = pool, origin
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.lost: str | None = None
        self.idle = False  # in the pool's idle list
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []  # not a deque: 56 B empty, not 760, per open stream
        self.buffered = 0
        self.paused = False
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        # Bytes received since the last body byte (the head, chunk framing, trailers: what
        # httptools may hold while no consumer paces it), and the header fields so far.
        self.unpaced = 0
        self.fields = 0
        self.field_bytes = 0

    def reusable(self) -> bool:
        """Whether this kept-alive connection can carry a request: nothing says the server
        closed it, and nothing of an earlier request is still waiting to be written."""
        transport = self.transport
        if self.lost is not None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        # The loop may not have read yet what the kernel already has: a FIN or a reset that
        # came while the connection was idle. Nothing is due on an idle connection, so
        # anything readable (end of stream, an error, stray bytes) means it is not usable.
        sock = transport.get_extra_info("socket")
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return not poller.poll(0)

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.idle:  # nothing is due on an idle connection: stray bytes make it unusable
            self.close()
        if self.lost is not None:
            return  # refused or closed: the rest is not read
        self.unpaced += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(f"malformed response: {exc}")
        else:
            if (
                self.unpaced > _MAX_HEAD
                or self.field_bytes > _MAX_HEAD
                or self.fields > _MAX_FIELDS
            ):
                # Final, like the other answers no stream can come from: asking again gets the
                # same, so the retry layer does not send the POST again.
                self.fail(self._too_large(), ProviderProtocolError)
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_done and not self.complete and exc is None and self._ends_at_close():
            self.complete = True  # a body without length or chunks ends when the socket does
        elif self.lost is None:
            self.lost = "connection closed" if exc is None else f"connection lost: {exc}"
        self.pool.forget(self)
        self._wake()

    def _ends_at_close(self) -> bool:
        headers = self.headers
        return "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )

    def _too_large(self) -> str:
        if self.fields > _MAX_FIELDS:
            return f"upstream sent more than {_MAX_FIELDS} header fields"
        return f"upstream sent more than {_MAX_HEAD >> 10} KiB of headers"

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += 1
        self.field_bytes += len(name) + len(value)
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.unpaced = 0
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _PAUSE_AT and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        self.complete = True

    # --

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def fail(self, reason: str, kind: type[Exception] = ConnectionLost) -> None:
        """Stop reading and close: the response cannot be used; waiters raise ``kind``."""
        self.lost, self.lost_as = reason, kind
        self.transport.close()

    def close(self) -> None:
        if self.lost is None:
            self.lost = "closed"
        self.pool.forget(self)
        self.transport.close()


class Pool:
    """Kept-alive connections per origin. ``tls``: the SSL context for ``https`` (default:
    the system's CA store)."""

    def __init__(
        self, connect_timeout: float, max_idle: int = 10_000, tls: ssl.SSLContext | None = None
    ) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.tls = tls
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._all: set[_Connection] = set()

    async def post(self, target: Target, headers: bytes, body: bytes) -> Response:
        """Send ``target.head`` + ``headers`` (CRLF-terminated lines) and ``body``; return
        once the response's status and headers are in."""
        if headers and not _HEADER_LINES.fullmatch(headers):
            raise ProviderBadRequestError(
                "extra request headers must be CRLF-terminated 'name: value' lines with no "
                "CR, LF or NUL inside"
            )
        request = b"%s%sContent-Length: %d\r\n\r\n%s" % (target.head, headers, len(body), body)
        origin = (target.host, target.port, target.tls)
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            conn.idle = False
            if not conn.reusable():
                conn.close()
                continue
            conn.reset()
            conn.transport.write(request)
            # Sent again below only if this write provably put nothing on the wire: the
            # transport tries ``send()`` at once (its buffer was empty: ``reusable``) and
            # closes itself only when that call failed, and a failed ``send()`` sends none
            # of its bytes. Any later failure (no answer, a reset while waiting for the
            # status line) is raised: the server may have read the POST and started a
            # generation, which costs money and is not ours to start twice.
            if not conn.transport.is_closing():
                return await self._response(conn)
            conn.close()
        conn = await self._connect(origin)
        conn.transport.write(request)
        return await self._response(conn)

    async def _connect(self, origin: tuple[str, int, bool]) -> _Connection:
        host, port, tls = origin
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    host,
                    port,
                    ssl=(self.tls or _tls()) if tls else None,
                    server_hostname=host if tls else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise ConnectFailed(f"could not connect to {host}:{port}: {exc}") from exc
        self._all.add(conn)
        return conn

    async def _response(self, conn: _Connection) -> Response:
        """Wait for the head of the answer to the request just written on ``conn``."""
        try:
            while not conn.head_done:
                if conn.lost is not None:
                    raise conn.lost_as(conn.lost)
                await conn.wait()
            if conn.lost_as is not ConnectionLost:  # the head is in, and was refused
                raise conn.lost_as(conn.lost)
        except BaseException:
            conn.close()
            raise
        return Response(conn, self)

    def give_back(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
            conn.idle = True
        else:
            conn.close()

    def forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if conn.idle:  # closed by the server while pooled
            conn.idle = False
            self._idle[conn.origin].remove(conn)

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
