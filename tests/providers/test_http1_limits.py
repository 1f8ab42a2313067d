"""The ``_http1`` client against an upstream that sends more than it should: a head without
end, more header fields than any server needs, a body faster than the client reads it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from tests.fakes.raw_http1 import (
    CHUNKED_HEAD,
    LAST_CHUNK,
    RawConnection,
    RawServer,
    chunk,
    client_unread,
    make_ca,
    response,
    sse,
)
from tests.providers._support import body_of, collect, make_request, wait_until

from flowserve.errors import ProviderProtocolError
from flowserve.providers._http1 import Pool, Target
from flowserve.providers.base import ProviderEnv
from flowserve.providers.openai_compatible import OpenAICompatibleProvider
from flowserve.providers.resilience import RetryPolicy, resilient_stream

MIB = 1 << 20


async def endless_fields(conn: RawConnection) -> None:
    await conn.read_request()
    await conn.send(b"HTTP/1.1 200 OK\r\n")
    block = b"".join(b"x-pad-%d: 1\r\n" % i for i in range(5000))
    while True:
        await conn.send(block)


async def endless_value(conn: RawConnection) -> None:
    await conn.read_request()
    await conn.send(b"HTTP/1.1 200 OK\r\nx-pad: ")
    while True:
        await conn.send(b"a" * 65536)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("send_head", "message"),
    [
        (endless_fields, "upstream sent more than 100 header fields"),
        (endless_value, "upstream sent more than 64 KiB of headers"),
    ],
    ids=["many-fields", "one-endless-field"],
)
async def test_an_endless_head_is_refused_at_its_limit(
    send_head: Callable[[RawConnection], Awaitable[None]], message: str
) -> None:
    with RawServer(send_head) as server:
        pool = Pool(5.0)
        started = time.monotonic()
        try:
            with anyio.fail_after(5), pytest.raises(ProviderProtocolError) as caught:
                await pool.post(Target(server.url, {}), b"", b"{}")
        finally:
            await pool.aclose()
        assert caught.value.message == message
        assert time.monotonic() - started < 2
        # The client hung up instead of pausing: the server's writes fail, its handler ends.
        await wait_until(server.connections[0].closed.is_set)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("pads", "size", "refused"),  # the content type and length make two more fields
    [
        (98, 600, None),  # 100 fields, 60 KB: as much as a response may have
        (99, 10, "upstream sent more than 100 header fields"),
        (1, 70_000, "upstream sent more than 64 KiB of headers"),
    ],
)
async def test_the_head_limits(pads: int, size: int, refused: str | None) -> None:
    async def answer(conn: RawConnection) -> None:
        while await conn.read_request() is not None:
            pad = b"".join(b"x-pad-%d: %s\r\n" % (i, b"a" * size) for i in range(pads))
            await conn.send(response(sse("ok"), headers=pad))

    with RawServer(answer) as server:
        pool = Pool(5.0)
        try:
            if refused is None:
                assert await body_of(await pool.post(Target(server.url, {}), b"", b"{}")) == sse(
                    "ok"
                )
            else:
                with pytest.raises(ProviderProtocolError, match=refused):
                    await pool.post(Target(server.url, {}), b"", b"{}")
        finally:
            await pool.aclose()


@pytest.mark.anyio
async def test_an_endless_head_reaches_the_user_as_a_protocol_error_not_retried() -> None:
    with RawServer(endless_value) as server:
        provider = OpenAICompatibleProvider(
            ProviderEnv(environ={}, settings={"base_url": server.base_url})
        )
        policy = RetryPolicy(max_retries=2, base_backoff=0.01)
        try:
            with anyio.fail_after(5), pytest.raises(ProviderProtocolError) as caught:
                await collect(resilient_stream(provider, make_request("m"), policy))
        finally:
            await provider.aclose()
        assert caught.value.message == "upstream sent more than 64 KiB of headers"
        assert len(server.requests) == 1  # final: the POST was not sent again


def _kernel_buffers() -> int:
    """The most a TCP socket pair may hold in kernel buffers here: the largest receive
    buffer plus the largest send buffer autotuning may grow to (Linux)."""
    total = 0
    for name in ("tcp_rmem", "tcp_wmem"):
        try:
            total += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        except (OSError, IndexError, ValueError):
            total += 16 * MIB
    return total


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_fast_upstream_is_held_back_by_a_slow_reader(scheme: str, tmp_path: Path) -> None:
    kernel = _kernel_buffers()
    # Far more than the kernel could ever hold, so that only back-pressure can stop the
    # server before the end (at least 64 MiB; socket buffers differ between machines).
    total = max(64 * MIB, 2 * kernel)
    event = chunk(b"data: " + b"x" * (64 * 1024 - 8) + b"\n\n")
    count = total // len(event) + 1
    body_size = count * (64 * 1024)

    async def flood(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(CHUNKED_HEAD)
        for _ in range(count):
            await conn.send(event)
        await conn.send(LAST_CHUNK)

    ca = make_ca(tmp_path) if scheme == "https" else None
    with RawServer(flood, tls=ca.server if ca else None) as server:
        pool = Pool(5.0, tls=ca.client if ca else None)
        try:
            answer = await pool.post(Target(server.url, {}), b"", b"{}")
            pieces = answer.chunks()
            received = len(await anext(pieces))  # then the client reads nothing for a while
            writer = server.connections[0]
            last, still_since = -1, time.monotonic()
            with anyio.fail_after(60):
                while time.monotonic() - still_since < 0.5:  # the server's drain() is stuck
                    await anyio.sleep(0.05)
                    if writer.sent != last:
                        last, still_since = writer.sent, time.monotonic()
            assert writer.sent <= kernel + 4 * MIB < total
            # What the client process holds: what the server wrote, less what is still in
            # the two kernels' buffers.
            unread = client_unread(answer._conn.transport)
            held = writer.sent - writer.unsent() - unread
            assert held < 4 * MIB, (held, writer.sent, writer.unsent(), unread)

            async for piece in pieces:  # reading again resumes the flow, to the end
                received += len(piece)
            answer.close()
        finally:
            await pool.aclose()
        assert received == body_size
        assert writer.sent == len(CHUNKED_HEAD) + count * len(event) + len(LAST_CHUNK)
