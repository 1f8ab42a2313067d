"""A TCP proxy that cuts connections mid-stream, as a flaky network or a restarting load
balancer does: the first ``cuts`` connections are closed (both ways, at once) after the
server has sent ``after`` SSE messages through them; later ones pass untouched."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CuttingProxy:
    def __init__(self, upstream_port: int, after: int, cuts: int = 1) -> None:
        self.upstream_port = upstream_port
        self.after = after
        self.cuts_left = cuts
        self.port = 0
        self.connections = 0
        self.cut = 0  # connections cut so far
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        watch: bool,
        other: asyncio.StreamWriter,
    ) -> None:
        seen = 0
        try:
            while data := await reader.read(65536):
                if watch and self._cutting:
                    seen += data.count(b"\n\n")
                    if seen >= self.after:
                        # forward up to the end of the message that reached the count, then
                        # cut: the client has that message, the rest is lost in flight
                        end = _nth_end(data, self.after - (seen - data.count(b"\n\n")))
                        writer.write(data[:end])
                        await writer.drain()
                        self.cut += 1
                        self._cutting = False
                        for w in (writer, other):
                            w.transport.abort()
                        return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._cutting = self.cuts_left > 0
        if self._cutting:
            self.cuts_left -= 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(
            self._pipe(client_r, server_w, False, client_w),
            self._pipe(server_r, client_w, True, server_w),
        )

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    @contextmanager
    def running(self) -> Iterator[CuttingProxy]:
        ready = threading.Event()
        thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        thread.start()
        ready.wait(10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            thread.join(10)
            self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


def _nth_end(data: bytes, n: int) -> int:
    """The index just past the ``n``-th blank line (message end) in ``data``."""
    at = 0
    for _ in range(max(n, 1)):
        at = data.index(b"\n\n", at) + 2
    return at
