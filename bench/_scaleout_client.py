"""What the scale-out benchmark sends besides the lean client's streams (bench/_loadgen.py):

* :class:`IdConn`, the lean client's connection that also notes each SSE message's ``id:``
  (``<run_id>:<n>``) once the message's ``data:`` line is in, and when the response head
  came; a callback sees every frame, so a stream can be dropped after k tokens;
* :class:`Plain`, one keep-alive connection for short requests (stop, revoke, publish,
  polls), raw HTTP/1.1 on asyncio streams: microseconds per request, so a poll loop's
  resolution is the server's answer time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
from _loadgen import LEGACY, Conn, StreamResult, Target
from _servers import FLOW_ID, ORG
from fake_upstream import TOKEN_WIDTH


def legacy_target(port: int, token: str, last_event_id: str | None = None) -> Target:
    headers = {"authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["last-event-id"] = last_event_id
    return Target(
        "legacy",
        port,
        f"/stream_exported_flow?flow_id={FLOW_ID}&org={ORG}",
        orjson.dumps({"in-0": "hi"}),
        LEGACY,
        headers,
    )


class IdConn(Conn):
    def __init__(self, width: int) -> None:
        self.ids: list[str] = []
        self.head_at = 0.0
        self.on_frame: Callable[[IdConn], None] | None = None
        self._id_tail = b""
        self._pending_id: str | None = None
        super().__init__(width)

    def start(self, target: Target, request: bytes) -> asyncio.Future[StreamResult]:
        self.ids, self.head_at, self._id_tail, self._pending_id = [], 0.0, b"", None
        return super().start(target, request)

    def data_received(self, data: bytes) -> None:
        if self.result is not None and not self.head_at:
            self.head_at = time.perf_counter()
        super().data_received(data)

    def _body(self, data: bytes, now: float) -> None:
        lines = (self._id_tail + data).split(b"\n")
        self._id_tail = lines.pop()
        for line in lines:
            if line.startswith(b"id: "):
                self._pending_id = line[4:].strip().decode()
            elif line.startswith(b"data: ") and self._pending_id is not None:
                self.ids.append(self._pending_id)
                self._pending_id = None
        result = self.result
        super()._body(data, now)
        if self.on_frame is not None and result is not None and self.result is result:
            self.on_frame(self)

    @property
    def tokens(self) -> int:
        return len(self.result.arrivals) if self.result is not None else 0


async def open_stream(target: Target) -> tuple[IdConn, asyncio.Future[StreamResult]]:
    """A new connection, and the stream started on it."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: IdConn(TOKEN_WIDTH), "127.0.0.1", target.port)
    return conn, conn.start(target, target.request())


LIMIT_S = 30.0  # the longest a short request may take


class Plain:
    """One keep-alive HTTP/1.1 connection for requests whose answer has a content-length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        token: str,
        body: bytes = b"",
        content_type: str = "application/json",
    ) -> tuple[int, bytes, float, float]:
        """(status, body, sent at, answered at) — perf_counter times."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = [
            f"{method} {path} HTTP/1.1",
            f"host: 127.0.0.1:{self.port}",
            f"authorization: Bearer {token}",
            "accept: application/json",
            f"content-length: {len(body)}",
        ]
        if body:
            head.append(f"content-type: {content_type}")
        sent = time.perf_counter()
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        async with asyncio.timeout(LIMIT_S):
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
                elif name == b"transfer-encoding":
                    raise RuntimeError(f"{method} {path}: a chunked answer, not expected here")
            data = await self.reader.readexactly(length)
        answered = time.perf_counter()
        if close:
            self.close()
        return status, data, sent, answered

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
