"""The load clients: a lean raw-HTTP/1.1 streaming client, and the official openai SDK.

The lean client is one ``asyncio.Protocol`` per connection (keep-alive, chunked bodies, SSE
``data:`` lines, orjson). It costs a few microseconds per frame, so one process can hold
thousands of streams and measure a server at saturation without becoming the bottleneck, and
it is the *same* instrument for every target, so differences between targets are the relay's.

Every token the fake upstream sends has the same width, so a client knows how many tokens a
frame carried from how much text arrived: a frame that carries k new tokens stamps all k with
its arrival time. A stream counts as complete only if its final text is exactly the text the
upstream sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

OPENAI, LEGACY, ENVELOPE = "openai", "legacy", "envelope"


@dataclass(frozen=True)
class Target:
    """One thing to stream from: where, the pre-encoded request, how to read its frames."""

    name: str
    port: int
    path: str
    body: bytes
    kind: str  # OPENAI | LEGACY | ENVELOPE
    headers: dict[str, str] = field(default_factory=dict)

    def request(self) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"host: 127.0.0.1:{self.port}",
            "content-type: application/json",
            "accept: text/event-stream",
            f"content-length: {len(self.body)}",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


class StreamResult:
    __slots__ = ("arrivals", "body_bytes", "end", "error", "first", "messages", "start", "text")

    def __init__(self, start: float) -> None:
        self.start = start
        self.first = 0.0
        self.end = 0.0
        self.arrivals: list[float] = []
        self.text = ""
        self.error: str | None = None
        self.messages = 0  # SSE data lines (frames) received
        self.body_bytes = 0  # de-chunked body bytes received

    @property
    def ttft(self) -> float:
        return self.first - self.start


class Conn(asyncio.Protocol):
    """One keep-alive connection; one stream at a time."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._reset()

    def _reset(self) -> None:
        self.result: StreamResult | None = None
        self.done: asyncio.Future[StreamResult] | None = None
        self.on_first: Callable[[StreamResult], None] | None = None
        self.buf = b""
        self.lines = b""
        self.head = True
        self.chunk_left = -1  # -1: expecting a chunk-size line
        self.length: int | None = None  # content-length body instead of chunked
        self.keep_alive = True
        self.status = 0
        self.parts: list[str] = []
        self.chars = 0
        self.kind = OPENAI

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        self._finish("connection closed mid-stream")

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.result is None:
            return
        self.buf += data
        if self.head:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].split(b"\r\n")
            self.buf = self.buf[end + 4 :]
            self.head = False
            self.status = int(head[0].split(b" ", 2)[1])
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"connection" and value == b"close":
                    self.keep_alive = False
        if self.length is not None:
            if len(self.buf) >= self.length:
                body, self.buf = self.buf[: self.length], self.buf[self.length :]
                self._finish(f"HTTP {self.status}: {body[:200]!r}")
            return
        self._chunks(now)

    # -- parsing --

    def _chunks(self, now: float) -> None:
        buf = self.buf
        pos = 0
        while True:
            if self.chunk_left < 0:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";")[0], 16)
                if size == 0:
                    if len(buf) - eol < 4:  # the final CRLF has not arrived yet
                        break
                    self.buf = buf[eol + 4 :]
                    if self.status != 200:
                        self._finish(f"HTTP {self.status}")
                    else:
                        self._finish(None)
                    return
                pos = eol + 2
                self.chunk_left = size
            take = min(self.chunk_left, len(buf) - pos)
            if take:
                self._body(buf[pos : pos + take], now)
                pos += take
                self.chunk_left -= take
            if self.chunk_left:
                break
            if len(buf) - pos < 2:  # the CRLF after the chunk data
                break
            pos += 2
            self.chunk_left = -1
        self.buf = buf[pos:]

    def _body(self, data: bytes, now: float) -> None:
        lines = (self.lines + data).split(b"\n")
        self.lines = lines.pop()
        result = self.result
        assert result is not None
        result.body_bytes += len(data)
        kind, width = self.kind, self.width
        for line in lines:
            if not line.startswith(b"data: "):
                continue
            result.messages += 1
            payload = line[6:]
            if kind == OPENAI:
                if payload == b"[DONE]":
                    continue
                choices = orjson.loads(payload).get("choices")
                if not choices:
                    continue
                text = choices[0]["delta"].get("content")
                if not text:
                    continue
                self.parts.append(text)
                self.chars += len(text)
            elif kind == LEGACY:
                frame = orjson.loads(payload)
                if "error" in frame:
                    result.error = str(frame["error"])
                    continue
                text = frame.get("out-0") or ""
                self.parts = [text]
                self.chars = len(text)
            else:
                frame = orjson.loads(payload)
                text = (frame.get("outputs") or {}).get("out-0") or ""
                if frame.get("state") not in ("RUNNING", "COMPLETED"):
                    result.error = f"{frame.get('state')}: {frame.get('error')}"
                if text:
                    self.parts.append(text)
                    self.chars += len(text)
            new = self.chars // width - len(result.arrivals)
            if new > 0:
                if not result.arrivals:
                    result.first = now
                    if self.on_first is not None:
                        self.on_first(result)
                result.arrivals.extend([now] * new)

    def _finish(self, error: str | None) -> None:
        result, done = self.result, self.done
        if result is None or done is None:
            return
        result.end = time.perf_counter()
        result.text = "".join(self.parts)
        if error and not result.error:
            result.error = error
        if not self.keep_alive and self.transport is not None:
            self.transport.close()
        self._reset()
        if not done.done():
            done.set_result(result)

    # -- API --

    def start(self, target: Target, request: bytes) -> asyncio.Future[StreamResult]:
        assert self.transport is not None and self.result is None
        self.kind = target.kind
        self.done = asyncio.get_running_loop().create_future()
        self.result = StreamResult(time.perf_counter())
        self.transport.write(request)
        return self.done

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to one target, opened on demand, reopened when closed."""

    def __init__(self, target: Target, width: int) -> None:
        self.target = target
        self.width = width
        self.request = target.request()
        self.idle: list[Conn] = []
        self.all: set[Conn] = set()

    async def _conn(self) -> Conn:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
            self.all.discard(conn)
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: Conn(self.width), "127.0.0.1", self.target.port
        )
        self.all.add(conn)
        return conn

    async def stream(
        self, limit_s: float, on_first: Callable[[StreamResult], None] | None = None
    ) -> StreamResult:
        try:
            conn = await asyncio.wait_for(self._conn(), limit_s)
        except (OSError, TimeoutError) as exc:
            result = StreamResult(time.perf_counter())
            result.error = f"connect: {exc!r}"
            result.end = result.start
            return result
        done = conn.start(self.target, self.request)
        conn.on_first = on_first
        try:
            result = await asyncio.wait_for(asyncio.shield(done), limit_s)
        except TimeoutError:
            conn.close()
            result = conn.result or StreamResult(time.perf_counter())
            result.error = "timeout"
            result.end = time.perf_counter()
            return result
        if conn.transport is not None and not conn.transport.is_closing():
            self.idle.append(conn)
        return result

    def close(self) -> None:
        for conn in self.all:
            conn.close()
        self.all.clear()
        self.idle.clear()


async def run_batch(
    pool: Pool, concurrency: int, per_worker: int, limit_s: float, deadline: float
) -> tuple[list[StreamResult], float]:
    """``concurrency`` workers, each streaming ``per_worker`` times back to back.

    Returns the results and the batch's wall time. Workers stop starting streams once
    ``deadline`` (perf_counter) has passed."""
    return await _batch(pool.stream, concurrency, per_worker, limit_s, deadline)


async def _batch(
    stream: Callable[[float], Awaitable[StreamResult]],
    concurrency: int,
    per_worker: int,
    limit_s: float,
    deadline: float,
) -> tuple[list[StreamResult], float]:
    async def worker() -> list[StreamResult]:
        out = []
        for _ in range(per_worker):
            if time.perf_counter() > deadline:
                break
            out.append(await stream(limit_s))
        return out

    started = time.perf_counter()
    batches = await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for batch in batches for r in batch], time.perf_counter() - started


async def run_for(
    pool: Pool, concurrency: int, seconds: float, limit_s: float
) -> tuple[list[StreamResult], float]:
    """Closed loop: ``concurrency`` workers stream back to back for ``seconds``."""
    deadline = time.perf_counter() + seconds
    return await run_batch(pool, concurrency, 1_000_000, limit_s, deadline)


# -- the official openai SDK, for the columns the issue names ------------------------------


class SdkClient:
    """``openai.AsyncOpenAI`` streaming chat completions (direct, or through LiteLLM)."""

    def __init__(self, base_url: str, api_key: str, width: int) -> None:
        import openai

        self.width = width
        self.client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=120.0
        )
        self.params = {
            "model": "fake",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def stream(self, limit_s: float) -> StreamResult:
        result = StreamResult(time.perf_counter())
        parts: list[str] = []
        chars = 0
        try:
            async with asyncio.timeout(limit_s):
                upstream = await self.client.chat.completions.create(**self.params)
                try:
                    async for chunk in upstream:
                        now = time.perf_counter()
                        for choice in chunk.choices:
                            text = choice.delta.content
                            if text:
                                parts.append(text)
                                chars += len(text)
                                new = chars // self.width - len(result.arrivals)
                                if new > 0:
                                    if not result.arrivals:
                                        result.first = now
                                    result.arrivals.extend([now] * new)
                finally:
                    await upstream.close()
        except Exception as exc:
            result.error = repr(exc)[:200]
        result.end = time.perf_counter()
        result.text = "".join(parts)
        return result

    async def batch(
        self, concurrency: int, per_worker: int, limit_s: float, deadline: float
    ) -> tuple[list[StreamResult], float]:
        return await _batch(self.stream, concurrency, per_worker, limit_s, deadline)

    async def aclose(self) -> None:
        await self.client.close()
