"""A fake OpenAI-compatible upstream, cheap enough never to be the bottleneck.

    python bench/fake_upstream.py [--port 0] [--tokens 50] [--gap-ms 10] [--first-ms 0]

Speaks ``POST /v1/chat/completions`` with ``stream: true`` in the real wire format
(shared/reference/providers-wire.md §1): ``data: <chunk JSON>`` events, a role chunk, one
content chunk per token, a ``finish_reason`` chunk, a usage chunk with ``choices: []`` when
``stream_options.include_usage``, then ``data: [DONE]`` and the end of the body. Without
``stream`` it answers one ``chat.completion`` object.

It is a raw asyncio protocol on uvloop (HTTP/1.1, keep-alive, chunked) writing chunks that
were encoded once per (model, usage) pair. Token ``i`` is written at ``t0 + first + i*gap``
(absolute times, so timer lateness does not accumulate); with ``gap 0`` the whole body is one
write. Each token is ``" t0000"``-style: fixed width (``TOKEN_WIDTH`` characters), so a
client can count tokens from text length.

Control, for the benchmark driver (loopback only):
``POST /control`` ``{"tokens": N, "gap_ms": G, "first_ms": F}`` changes the pacing for the
requests that follow; ``GET /stats`` returns counters. Prints ``READY <port>`` when listening,
exits on SIGTERM/SIGINT, when its parent process goes away, or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

TOKEN_WIDTH = 6  # len(" t0000")
MAX_TOKENS = 10_000
_CREATED = 1_755_137_921


def token_text(i: int) -> str:
    return f" t{i:04d}"


def expected_text(tokens: int) -> str:
    return "".join(token_text(i) for i in range(tokens))


def _chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk holding one SSE event."""
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _sse_json(obj: dict[str, Any]) -> bytes:
    return _chunk(json.dumps(obj, separators=(",", ":")).encode())


class Script:
    """Every byte of one streamed response, encoded once."""

    def __init__(self, model: str, tokens: int, usage: bool) -> None:
        base = {
            "id": "chatcmpl-bench0000000000000000000",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_bench",
        }
        extra = {"usage": None} if usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse_json({**base, "choices": [choice], **extra})

        self.role = chunk({"role": "assistant", "content": "", "refusal": None})
        self.tokens = [chunk({"content": token_text(i)}) for i in range(tokens)]
        tail = chunk({}, "stop")
        if usage:
            counts = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
            tail += _sse_json({**base, "choices": [], "usage": counts})
        self.tail = tail + _chunk(b"[DONE]") + b"0\r\n\r\n"
        self.whole = self.role + b"".join(self.tokens) + self.tail


HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n"
    b"x-request-id: req_bench\r\n"
    b"openai-processing-ms: 1\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _plain(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status.encode(),
        content_type,
        len(body),
        body,
    )


class Upstream:
    """Shared state: pacing, the script cache and counters."""

    def __init__(self, tokens: int, gap_ms: float, first_ms: float) -> None:
        self.tokens, self.gap, self.first = tokens, gap_ms / 1000, first_ms / 1000
        self.scripts: dict[tuple[str, int, bool], Script] = {}
        self.requests = self.streams = self.active = self.tokens_sent = self.disconnects = 0
        self.connections = 0

    def script(self, model: str, usage: bool) -> Script:
        key = (model, self.tokens, usage)
        found = self.scripts.get(key)
        if found is None:
            if len(self.scripts) > 64:
                self.scripts.clear()
            found = self.scripts[key] = Script(model, self.tokens, usage)
        return found

    def control(self, body: dict[str, Any]) -> None:
        if "tokens" in body:
            self.tokens = max(1, min(int(body["tokens"]), MAX_TOKENS))
        if "gap_ms" in body:
            self.gap = max(0.0, float(body["gap_ms"])) / 1000
        if "first_ms" in body:
            self.first = max(0.0, float(body["first_ms"])) / 1000

    def stats(self) -> dict[str, Any]:
        usage = os.times()
        return {
            "tokens": self.tokens,
            "gap_ms": self.gap * 1000,
            "first_ms": self.first * 1000,
            "requests": self.requests,
            "streams": self.streams,
            "active": self.active,
            "tokens_sent": self.tokens_sent,
            "disconnects": self.disconnects,
            "connections": self.connections,
            "cpu_s": usage.user + usage.system,
        }


class Connection(asyncio.Protocol):
    def __init__(self, upstream: Upstream) -> None:
        self.up = upstream
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timers: list[asyncio.TimerHandle] = []
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.up.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.up.connections -= 1
        if self.streaming:
            self.up.disconnects += 1
            self.up.active -= 1
            self.streaming = False
        for timer in self.timers:
            timer.cancel()
        self.timers = []
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.streaming:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self._fail(b"431 Request Header Fields Too Large")
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            method, path, *_ = head[0].split(" ")
            self._handle(method, path.split("?")[0], body)

    def _fail(self, status: bytes) -> None:
        if self.transport is not None:
            self.transport.write(_plain(status.decode(), b'{"error":"bad request"}'))
            self.transport.close()

    def _handle(self, method: str, path: str, body: bytes) -> None:
        assert self.transport is not None
        up = self.up
        up.requests += 1
        if method == "POST" and path.endswith("/chat/completions"):
            try:
                request = json.loads(body)
            except ValueError:
                self.transport.write(_plain("400 Bad Request", b'{"error":"bad json"}'))
                return
            model = str(request.get("model") or "fake")
            options = request.get("stream_options") or {}
            script = up.script(model, bool(options.get("include_usage")))
            if request.get("stream"):
                self._stream(script)
            else:
                self.transport.write(_plain("200 OK", self._completion(model)))
        elif method == "POST" and path == "/control":
            up.control(json.loads(body or b"{}"))
            self.transport.write(_plain("200 OK", json.dumps(up.stats()).encode()))
        elif method == "GET" and path == "/stats":
            self.transport.write(_plain("200 OK", json.dumps(up.stats()).encode()))
        elif method == "GET" and path.endswith("/models"):
            models = {"object": "list", "data": [{"id": "fake", "object": "model"}]}
            self.transport.write(_plain("200 OK", json.dumps(models).encode()))
        else:
            self.transport.write(_plain("404 Not Found", b'{"error":"not found"}'))

    def _completion(self, model: str) -> bytes:
        text = expected_text(self.up.tokens)
        message = {"role": "assistant", "content": text}
        n = self.up.tokens
        return json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": _CREATED,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n},
            }
        ).encode()

    def _stream(self, script: Script) -> None:
        assert self.transport is not None
        up = self.up
        up.streams += 1
        n = len(script.tokens)
        if up.gap == 0 and up.first == 0:
            self.transport.write(HEAD + script.whole)
            up.tokens_sent += n
            return
        self.streaming = True
        up.active += 1
        loop = asyncio.get_running_loop()
        t0 = loop.time() + up.first
        self.transport.write(HEAD)
        self.timers = [loop.call_at(t0, self._send, script, 0)]
        self._gap, self._t0 = up.gap, t0

    def _send(self, script: Script, i: int) -> None:
        if self.transport is None:
            return
        up = self.up
        last = i == len(script.tokens) - 1
        data = script.tokens[i]
        if i == 0:
            data = script.role + data
        if last:
            data += script.tail
        self.transport.write(data)
        up.tokens_sent += 1
        if last:
            self.streaming = False
            up.active -= 1
            self.timers = []
            if self.buf:  # a pipelined request waited for this response
                self.data_received(b"")
            return
        loop = asyncio.get_running_loop()
        self.timers = [loop.call_at(self._t0 + (i + 1) * self._gap, self._send, script, i + 1)]


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    upstream = Upstream(args.tokens, args.gap_ms, args.first_ms)
    server = await loop.create_server(
        lambda: Connection(upstream), "127.0.0.1", args.port, backlog=8192, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    deadline = time.monotonic() + args.max_seconds
    while not stop.is_set() and time.monotonic() < deadline and os.getppid() == parent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--first-ms", type=float, default=0.0)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args(argv)
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    try:
        import uvloop

        uvloop.run(serve(args))
    except ImportError:
        asyncio.run(serve(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
