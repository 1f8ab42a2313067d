"""A small HTTP/1.1 client for one job: POST a body and stream the response back, over kept-
alive connections. The openai-compatible adapter's transport for direct connections.

Written by hand because the relay's time to first token is mostly transport. Measured here,
sequential 3-token streams from bench/fake_upstream.py, CPU per request: the openai SDK
1.1 ms, httpx 0.74 ms (a cancel scope per socket read, a liveness check per pooled
connection), this client 0.07 ms; aiohttp, tried in between, still spent 0.25-0.55 ms of the
relay's wall time between sending and having the response head. This client writes one
pre-encoded block and parses the answer with httptools (the C parser uvicorn uses);
``bench/upstream_clients.py`` repeats the measurement. It does only what that job needs:
``http`` and ``https`` (asyncio's TLS, the system's CA store), ``Content-Length``, chunked and
close-delimited bodies, keep-alive. A proxy is not its business: the adapter sends proxied
requests through httpx.

A connection goes back to the pool only when its response was read to the end; one that was
abandoned mid-body (the consumer was cancelled) is closed, which is what stops the upstream
generating. A request that finds its kept-alive connection closed by the server before any
byte of the answer came back is sent once more on a new connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from functools import cache
from urllib.parse import urlsplit

import anyio
import httptools

_PAUSE_AT = 1 << 20  # body bytes buffered before reading from the socket pauses


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
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.head = ("\r\n".join(lines) + "\r\n").encode("latin-1")


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
                raise ConnectionLost(conn.lost)
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
        self.received = False  # any byte of this response yet

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.lost = f"malformed response: {exc}"
            self.transport.close()
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

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
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

    def close(self) -> None:
        if self.lost is None:
            self.lost = "closed"
        self.pool.forget(self)
        self.transport.close()


class Pool:
    """Kept-alive connections per origin."""

    def __init__(self, connect_timeout: float, max_idle: int = 10_000) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._all: set[_Connection] = set()

    async def post(self, target: Target, headers: bytes, body: bytes) -> Response:
        """Send ``target.head`` + ``headers`` (CRLF-terminated lines) and ``body``; return
        once the response's status and headers are in."""
        head = b"%s%sContent-Length: %d\r\n\r\n" % (target.head, headers, len(body))
        origin = (target.host, target.port, target.tls)
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            conn.idle = False
            if conn.lost is None and not conn.transport.is_closing():
                try:
                    return await self._exchange(conn, head, body)
                except ConnectionLost:
                    if conn.received:
                        raise
                    # Closed by the server while it sat in the pool: nothing was answered,
                    # so send it again on a new connection.
        conn = await self._connect(origin)
        return await self._exchange(conn, head, body)

    async def _connect(self, origin: tuple[str, int, bool]) -> _Connection:
        host, port, tls = origin
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    host,
                    port,
                    ssl=_tls() if tls else None,
                    server_hostname=host if tls else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise ConnectFailed(f"could not connect to {host}:{port}: {exc}") from exc
        self._all.add(conn)
        return conn

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes) -> Response:
        conn.reset()
        conn.transport.write(head + body)
        try:
            while not conn.head_done:
                if conn.lost is not None:
                    raise ConnectionLost(conn.lost)
                await conn.wait()
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
