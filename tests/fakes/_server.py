"""Plumbing shared by the wire fakes: scenarios, a request log, and a real HTTP server.

A fake is an ASGI app (a :class:`FakeServer` subclass that implements ``handle``) served by
uvicorn on 127.0.0.1 at a random free port, in a background thread with its own event loop,
so the SDK under test talks to it over a real socket. Each request takes the next
:class:`Scenario` from a queue (a plain stream when the queue is empty).

What the tests assert on is recorded here: every request (method, path, headers, JSON body),
and the moment the client disconnected from a stream it had not finished (read from the
ASGI ``http.disconnect`` message, which uvicorn delivers as soon as the socket closes).

Faults are produced with real bytes on the wire: a *drop* returns from the app without the
final chunk, so uvicorn closes the socket mid chunked body and the client sees an incomplete
message; a *split* writes one event in two network writes cut inside a UTF-8 character.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import anyio
import uvicorn

DROP: Final = b"\x00drop-connection"  # yielded by a body iterator: cut the connection here
_SPLIT_PAUSE = 0.02  # long enough for the two halves to leave as separate TCP segments


@dataclass
class Scenario:
    """What the fake does with one request. At most one of the ``*_after`` faults is set."""

    tokens: Sequence[str] = ("Hello", ",", " world", "!")
    gap: float = 0.0  # seconds between tokens
    status: int = 200  # not 200: answer with this HTTP error before any stream
    body: Any = None  # error body for ``status`` (a provider-shaped default when None)
    headers: Mapping[str, str] = field(default_factory=dict)  # extra response headers
    error_after: int | None = None  # in-stream error event after k tokens
    error_body: Any = None  # that event's payload (provider-shaped default when None)
    truncate_after: int | None = None  # clean end of body after k tokens, no end marker
    drop_after: int | None = None  # cut the connection after k tokens
    split_utf8: bool = False  # write each event in two writes split inside a character
    end_marker: bool = True  # openai: send ``data: [DONE]`` at the end
    prompt_tokens: int = 12
    # Instead of a stream: answer 200 with ``body`` (JSON unless bytes or str) under this
    # content type, as a server or proxy that does not stream does.
    content_type: str | None = None
    redirect_to: str | None = None  # instead of a stream: 307 to this ``Location``
    done_reason: str | None = None  # replicate: ``done`` says ``{"reason": …}`` after the tokens

    @property
    def sent_tokens(self) -> Sequence[str]:
        cut = [k for k in (self.error_after, self.truncate_after, self.drop_after) if k is not None]
        return self.tokens[: min(cut)] if cut else self.tokens

    @property
    def completes(self) -> bool:
        return self.error_after is None and self.truncate_after is None and self.drop_after is None


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic()
    peer: tuple[str, int] | None = None  # the client's address: which connection it came on


class FakeServer:
    """Base ASGI app of the fakes; subclasses implement :meth:`handle`."""

    def __init__(self) -> None:
        self.base_url = ""
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.scenarios: deque[Scenario] = deque()
            self.requests: list[RecordedRequest] = []
            self.disconnects: list[float] = []  # time.monotonic() of each client disconnect
            self.errors: list[BaseException] = []  # bugs in the fake itself

    def script(self, *scenarios: Scenario) -> None:
        with self._lock:
            self.scenarios.extend(scenarios)

    def next_scenario(self) -> Scenario:
        with self._lock:
            return self.scenarios.popleft() if self.scenarios else Scenario()

    def requests_to(self, path_prefix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith(path_prefix)]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http", scope["type"]
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        peer = tuple(scope["client"]) if scope.get("client") else None
        request = RecordedRequest(
            scope["method"], scope["path"], headers, body, time.monotonic(), peer
        )
        self.requests.append(request)
        try:
            await self.handle(request, receive, send)
        except Exception as exc:
            self.errors.append(exc)
            raise

    async def handle(self, request: RecordedRequest, receive: Any, send: Any) -> None:
        raise NotImplementedError

    # -- helpers for subclasses --

    async def send_json(
        self,
        send: Any,
        status: int,
        body: Any,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        pairs = [("content-type", content_type), ("content-length", str(len(payload)))]
        pairs += list((headers or {}).items())
        await send({"type": "http.response.start", "status": status, "headers": _encode(pairs)})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def send_instead_of_stream(
        self, send: Any, scenario: Scenario, headers: Mapping[str, str] | None = None
    ) -> bool:
        """Answer ``scenario``'s redirect or non-stream body, if it has one; ``True`` if so."""
        if scenario.redirect_to is not None:
            pairs = [("location", scenario.redirect_to), ("content-length", "0")]
            pairs += list((headers or {}).items())
            await send({"type": "http.response.start", "status": 307, "headers": _encode(pairs)})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        if scenario.content_type is not None:
            body = scenario.body
            if isinstance(body, str):
                body = body.encode()
            elif not isinstance(body, bytes):
                body = compact(body).encode()
            pairs = [("content-type", scenario.content_type), ("content-length", str(len(body)))]
            pairs += list((headers or {}).items())
            await send({"type": "http.response.start", "status": 200, "headers": _encode(pairs)})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return True
        return False

    async def send_stream(
        self,
        receive: Any,
        send: Any,
        pieces: AsyncIterator[bytes],
        headers: Mapping[str, str],
    ) -> None:
        """Stream ``pieces`` (each one network write) while watching for a disconnect."""
        await send({"type": "http.response.start", "status": 200, "headers": _encode(headers)})
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.disconnects.append(time.monotonic())
                tg.cancel_scope.cancel()

            tg.start_soon(watch_disconnect)
            async for piece in pieces:
                if piece is DROP:
                    tg.cancel_scope.cancel()
                    return  # uvicorn closes the socket: the chunked body stays incomplete
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()


async def event_writes(event: bytes, split_utf8: bool) -> AsyncIterator[bytes]:
    """One event as network writes: whole, or cut between the bytes of a UTF-8 character."""
    if split_utf8:
        for index, byte in enumerate(event):
            if byte & 0xC0 == 0x80:  # a continuation byte: the cut lands inside a character
                yield event[:index]
                await anyio.sleep(_SPLIT_PAUSE)
                yield event[index:]
                return
    yield event


class RecordingServer(FakeServer):
    """Only records what reaches it, and answers 404: the place a redirect points to, which
    nothing may reach."""

    async def handle(self, request: RecordedRequest, receive: Any, send: Any) -> None:
        await self.send_json(send, 404, {"error": "you should not be here"})


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _encode(headers: Mapping[str, str] | list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in items]


Fake = TypeVar("Fake", bound=FakeServer)


@contextmanager
def serve(app: Fake) -> Iterator[Fake]:
    """Serve ``app`` on 127.0.0.1 at a free port until the block exits; sets ``app.base_url``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="off",
        http="h11",
        ws="none",
        loop="asyncio",
        log_config=None,
        log_level="critical",  # a deliberate drop is logged as an error by uvicorn
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"fake-{port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)
        app.base_url = f"http://127.0.0.1:{port}"
        yield app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
