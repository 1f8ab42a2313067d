"""Slow clients (slowloris): a connection whose request headers do not finish within
``header_timeout`` is closed, on a fresh connection as on a kept-alive one, while a slow
request body and a long stream are left alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests import sse
from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow

TIMEOUT = 1.0  # the server's header_timeout in this module
TRICKLE = 0.3  # seconds between the bytes a slow client sends
# Headers that never end: a slow client keeps sending this, one byte at a time.
ENDLESS = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
# Generous: the server must close within TIMEOUT, the machine may be busy.
CLOSED_WITHIN = TIMEOUT + 5

LONG_STREAM = """
id: slow-stream
inputs:
  in-0: {description: "text"}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.2&repeat=10", prompt: "{in-0}"}
outputs:
  out-0: llm-0
"""


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("slow"), env={"FLOWSERVE_HEADER_TIMEOUT": str(TIMEOUT)}
    )
    try:
        assert srv.publish(LONG_STREAM).status_code in (200, 201)
        srv.publish_file("echo.yaml")
        yield srv
    finally:
        stop_server(srv)


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


async def trickle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, limit: float
) -> tuple[float | None, bytes]:
    """Send ``data`` one byte per TRICKLE until the server closes the connection. Returns
    when it closed (seconds after the call, None if it was still open after ``limit``) and
    what the server sent meanwhile."""
    started = time.monotonic()
    received = b""
    for byte in data:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except (ConnectionError, OSError):
            break  # closed: the rest of what it sent, if anything, is still in the buffer
        try:
            chunk = await asyncio.wait_for(reader.read(65536), TRICKLE)
        except TimeoutError:
            chunk = None  # nothing to read, still open
        except (ConnectionError, OSError):
            return time.monotonic() - started, received
        if chunk == b"":
            return time.monotonic() - started, received
        received += chunk or b""
        if time.monotonic() - started > limit:
            return None, received
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), limit):
            received += chunk
    except (TimeoutError, ConnectionError, OSError):
        pass
    return time.monotonic() - started, received


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await asyncio.wait_for(reader.readexactly(length), 10)


def test_slow_headers_are_closed_while_others_are_served(impatient: Server):
    async def slow_client() -> tuple[float | None, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(impatient))
        try:
            return await trickle(reader, writer, ENDLESS, CLOSED_WITHIN)
        finally:
            await close(writer)

    async def main() -> tuple[list[tuple[float | None, bytes]], httpx.Response, float]:
        clients = [asyncio.create_task(slow_client()) for _ in range(50)]
        await asyncio.sleep(TIMEOUT / 2)  # all of them are connected and trickling
        async with httpx.AsyncClient() as client:
            started = time.monotonic()
            normal = await client.get(f"{impatient.base_url}/healthz", timeout=10)
            took = time.monotonic() - started
        return await asyncio.gather(*clients), normal, took

    results, normal, took = asyncio.run(main())
    assert normal.status_code == 200 and took < 5
    closed = [when for when, _ in results]
    assert all(when is not None for when in closed), closed
    # Closed by the timeout (not before it), within a few seconds.
    assert all(TIMEOUT * 0.8 <= when <= CLOSED_WITHIN for when in closed if when), closed
    # Those that got an answer before the close (most: a reset can eat it) were told why.
    answers = [got for _, got in results if got]
    assert answers and all(got.startswith(b"HTTP/1.1 408 ") for got in answers), answers[:3]


def test_a_client_that_sends_part_of_its_headers_and_waits_gets_408(impatient: Server):
    async def main() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(impatient))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        got = await asyncio.wait_for(reader.read(), CLOSED_WITHIN)  # until the server closes
        await close(writer)
        return time.monotonic() - started, got

    took, got = asyncio.run(main())
    assert TIMEOUT * 0.8 <= took <= CLOSED_WITHIN
    assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"connection: close\r\n" in got.lower()


def test_a_connection_that_sends_nothing_is_closed(impatient: Server):
    async def main() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(impatient))
        started = time.monotonic()
        got = await asyncio.wait_for(reader.read(), CLOSED_WITHIN)
        await close(writer)
        return time.monotonic() - started, got

    took, got = asyncio.run(main())
    assert TIMEOUT * 0.8 <= took <= CLOSED_WITHIN
    assert got == b""  # no request began: closed without an answer, as an idle keep-alive


@pytest.mark.parametrize(
    "next_request",
    [ENDLESS, b"\r\n" * 1000],  # a slow request; blank lines, which begin no request at all
    ids=["slow-request", "blank-lines"],
)
def test_a_kept_alive_connection_with_a_slow_next_request_is_closed(
    impatient: Server, next_request: bytes
):
    async def main() -> tuple[bytes, float | None, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(impatient))
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = await read_response(reader)
            when, got = await trickle(reader, writer, next_request, CLOSED_WITHIN)
            return first, when, got
        finally:
            await close(writer)

    first, when, _got = asyncio.run(main())
    assert first.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" not in first.lower()  # kept alive
    assert when is not None and when <= CLOSED_WITHIN


def unchunk(body: bytes) -> bytes:
    data = b""
    while True:
        size, _, rest = body.partition(b"\r\n")
        if int(size, 16) == 0:
            return data
        data, body = data + rest[: int(size, 16)], rest[int(size, 16) + 2 :]


def stream_request(server: Server) -> bytes:
    """A whole raw request for the slow-stream flow, ready to write to a socket."""
    body = json.dumps({"in-0": "a b"}).encode()
    return (
        f"POST /stream_exported_flow?flow_id=slow-stream&org={server.org} HTTP/1.1\r\n"
        f"Host: x\r\nAuthorization: Bearer {server.public_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_a_stream_longer_than_the_header_timeout_completes(impatient: Server):
    request = stream_request(impatient)

    async def main() -> tuple[float, bytes, bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(impatient))
        try:
            writer.write(request)
            started = time.monotonic()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            chunks = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 30)
            took = time.monotonic() - started
            # The connection outlived the stream: the next request on it is answered.
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return took, head, chunks, await read_response(reader)
        finally:
            await close(writer)

    took, head, chunks, after = asyncio.run(main())
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" not in head.lower()
    messages = list(sse.parse(unchunk(chunks).decode()))
    assert messages[-1].json() == {"out-0": " ".join(["a b"] * 10)}
    assert took > 3 * TIMEOUT  # it did outlast the header timeout
    assert after.startswith(b"HTTP/1.1 200 ")


def test_a_slow_request_pipelined_behind_a_stream_waits_for_it_then_closes(impatient: Server):
    request = stream_request(impatient)

    async def main() -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(impatient))

        async def dribble() -> None:
            for byte in ENDLESS:
                await asyncio.sleep(TRICKLE)
                writer.write(bytes([byte]))

        try:
            writer.write(request)
            sender = asyncio.create_task(dribble())
            response = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 30)
            ended = time.monotonic()
            rest = await asyncio.wait_for(reader.read(), CLOSED_WITHIN)  # b"": closed
            sender.cancel()
            assert rest == b""
            return response, time.monotonic() - ended
        finally:
            await close(writer)

    response, closed_after = asyncio.run(main())
    head, _, chunks = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    messages = list(sse.parse(unchunk(chunks).decode()))
    assert messages[-1].json() == {"out-0": " ".join(["a b"] * 10)}  # the stream was whole
    assert closed_after < CLOSED_WITHIN


def test_a_slow_steady_body_is_not_cut(impatient: Server):
    body = json.dumps({"in-0": "slow body"}).encode()
    head = (
        f"POST /inference/v0/run/{impatient.org}/echo HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {impatient.public_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    async def main() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(impatient))
        try:
            writer.write(head)
            started = time.monotonic()
            for i in range(0, len(body), 2):  # about 3 s for the whole body
                await asyncio.sleep(TRICKLE)
                writer.write(body[i : i + 2])
                await writer.drain()
            return time.monotonic() - started, await read_response(reader)
        finally:
            await close(writer)

    took, response = asyncio.run(main())
    assert took > 2 * TIMEOUT
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" not in response.lower()  # kept alive, as any other
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["outputs"] == {"out-0": "slow body"}


def test_header_timeout_is_a_setting():
    from flowserve.config import Settings

    assert Settings().header_timeout == 10.0
    assert Settings(header_timeout=2.5).header_timeout == 2.5
    with pytest.raises(ValueError):
        Settings(header_timeout=0)
