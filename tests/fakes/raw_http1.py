"""A bare HTTP/1.1 server that a test scripts byte for byte, for the ``_http1`` client's tests.

The wire fakes in this package answer like real providers, through uvicorn; this one lets a
test be the broken or hostile upstream itself: endless headers, a hang-up after reading a
request, a reset while a connection is idle, a body written faster than it is read. It runs
on 127.0.0.1 (over TLS when given a context) in a thread with its own event loop, so what it
does happens while the client's loop is busy or blocked, as a real server's would. Per
connection, ``handler(conn)`` runs on that loop; what the client sent is recorded.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import ssl
import struct
import termios
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trustme

T = TypeVar("T")


@dataclass
class RawRequest:
    connection: int  # index of the connection it came on, in arrival order
    head: bytes
    body: bytes


class RawConnection:
    """One accepted connection, as its handler sees it."""

    def __init__(
        self, server: RawServer, index: int, reader: asyncio.StreamReader, writer: Any
    ) -> None:
        self.server, self.index = server, index
        self.reader, self.writer = reader, writer
        self.sent = 0  # bytes passed to ``send`` whose drain returned
        self.closed = threading.Event()  # set once the handler is done with the connection

    async def read_request(self) -> RawRequest | None:
        """The next request, its ``Content-Length`` body read to the end; ``None`` once the
        client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        request = RawRequest(self.index, head, body)
        self.server.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)

    def hang_up(self, reset: bool = False) -> None:
        """Close: with a FIN, or with a reset (``SO_LINGER`` 0), as a crashed server does."""
        if reset:
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
        else:
            self.writer.close()

    def unsent(self) -> int:
        """Bytes this side's kernel holds that the client has not acknowledged (Linux)."""
        return _ioctl_int(self.writer.get_extra_info("socket").fileno(), termios.TIOCOUTQ)


class RawServer:
    """``with RawServer(handler) as server``: listening at ``server.url`` until the block ends."""

    def __init__(
        self,
        handler: Callable[[RawConnection], Awaitable[None]],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.handler, self.tls = handler, tls
        self.connections: list[RawConnection] = []
        self.requests: list[RawRequest] = []
        self.errors: list[BaseException] = []  # what a handler raised: a bug in the test
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v1"

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and wait for it (a blocking call)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def hang_up(self, index: int, reset: bool = False) -> None:
        """Close connection ``index`` from the server's side (see :meth:`RawConnection.hang_up`),
        whatever the client's loop is doing."""

        async def hang_up() -> None:
            self.connections[index].hang_up(reset)

        self.run(hang_up())

    def __enter__(self) -> RawServer:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("raw server did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        if exc_info[0] is None:
            assert not self.errors, self.errors

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._loop.set_exception_handler(_quiet)
        tasks: set[asyncio.Task[None]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = RawConnection(self, len(self.connections), reader, writer)
            self.connections.append(conn)
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self.handler(conn)
            except (ConnectionError, ssl.SSLError):
                pass  # the client went away: what many tests make it do
            except Exception as exc:
                self.errors.append(exc)
            finally:
                tasks.discard(task)
                writer.close()
                conn.closed.set()

        server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=self.tls)
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        await self._stop.wait()
        server.close()
        for conn in self.connections:
            transport = conn.writer.transport
            # abort() ends each handler's reads and writes; a transport already closing has
            # (or will have) lost its connection, and aborting it again would touch a loop
            # it has let go of
            if not transport.is_closing():
                transport.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=5)


def _quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The server loop's exception handler: a client that hung up, or refused the
    certificate, is what many tests make happen."""
    if not isinstance(context.get("exception"), ConnectionError | ssl.SSLError):
        loop.default_exception_handler(context)


def client_unread(transport: Any) -> int:
    """Bytes the client's kernel received that its process has not read yet (Linux)."""
    return _ioctl_int(transport.get_extra_info("socket").fileno(), termios.FIONREAD)


def _ioctl_int(fd: int, request: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0])


def response(body: bytes, status: int = 200, headers: bytes = b"") -> bytes:
    """A whole ``Content-Length`` answer; ``headers`` are extra CRLF-terminated lines."""
    return (
        b"HTTP/1.1 %d OK\r\ncontent-type: text/event-stream\r\n%scontent-length: %d\r\n\r\n%s"
        % (
            status,
            headers,
            len(body),
            body,
        )
    )


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse(*texts: str) -> bytes:
    return b"".join(b'data: {"text": "%s"}\n\n' % t.encode() for t in texts)


@dataclass
class LocalCA:
    """A certificate authority made for one test, and a server certificate it signed."""

    server: ssl.SSLContext  # serves the certificate for ``hostname``
    client: ssl.SSLContext  # trusts that CA, and nothing else


def make_ca(directory: Path, hostname: str = "127.0.0.1") -> LocalCA:
    """A new CA and a server certificate it signed for ``hostname`` (an IP address or a DNS
    name), made with trustme; ``directory`` is kept for callers that want the files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert(hostname)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return LocalCA(server=server, client=client)
