"""When the ``_http1`` client sends a POST again: only when it provably never left.

A POST to an LLM server costs money and may start a generation, so a request that may have
reached the server is never resent by the transport; a kept-alive connection the server
closed while it sat in the pool is replaced before anything is written on it."""

from __future__ import annotations

import time

import anyio
import pytest
from tests.fakes.raw_http1 import RawConnection, RawServer, response, sse
from tests.providers._support import body_of

from flowserve.providers._http1 import ConnectionLost, Pool, Target

pytestmark = pytest.mark.anyio

OK = sse("ok")


async def answer_all(conn: RawConnection) -> None:
    while await conn.read_request() is not None:
        await conn.send(response(OK))


@pytest.mark.parametrize("hang_up", ["close", "reset"])
async def test_a_request_the_server_read_is_not_sent_again(hang_up: str) -> None:
    async def answer(conn: RawConnection) -> None:
        served = 0
        while await conn.read_request() is not None:
            served += 1
            if conn.index == 0 and served == 2:  # read to the end of its body, no answer
                conn.hang_up(reset=hang_up == "reset")
                return
            await conn.send(response(OK))

    with RawServer(answer) as server:
        pool = Pool(5.0)
        target = Target(server.url, {})
        try:
            assert await body_of(await pool.post(target, b"", b'{"n": 1}')) == OK
            with anyio.fail_after(5), pytest.raises(ConnectionLost):
                await pool.post(target, b"", b'{"n": 2}')  # on the kept-alive connection
            await anyio.sleep(0.2)  # where a resend would have arrived
        finally:
            await pool.aclose()
        assert [(r.connection, r.body) for r in server.requests] == [
            (0, b'{"n": 1}'),
            (0, b'{"n": 2}'),
        ]
        assert len(server.connections) == 1


@pytest.mark.parametrize("hang_up", ["close", "reset"])
@pytest.mark.parametrize("seen", [True, False], ids=["seen-by-the-loop", "only-in-the-kernel"])
async def test_a_connection_closed_while_idle_is_replaced(hang_up: str, seen: bool) -> None:
    with RawServer(answer_all) as server:
        pool = Pool(5.0)
        target = Target(server.url, {})
        try:
            assert await body_of(await pool.post(target, b"", b"1")) == OK
            server.hang_up(0, reset=hang_up == "reset")  # its keep-alive timeout, say
            if seen:
                await anyio.sleep(0.1)  # the client's loop reads the FIN or the reset
            else:
                # The FIN or reset reaches the client's kernel while its loop is busy, so the
                # loop has not read it when the next request picks the connection.
                time.sleep(0.1)  # noqa: ASYNC251 - the loop must not run here
            assert await body_of(await pool.post(target, b"", b"2")) == OK
        finally:
            await pool.aclose()
        assert [(r.connection, r.body) for r in server.requests] == [(0, b"1"), (1, b"2")]


@pytest.mark.parametrize("seen", [True, False], ids=["seen-by-the-loop", "only-in-the-kernel"])
async def test_a_connection_the_server_spoke_on_while_idle_is_replaced(seen: bool) -> None:
    # Some servers answer 408 on an idle connection before closing it: that answer must not
    # be taken for the next request's, nor the connection used again.
    async def answer(conn: RawConnection) -> None:
        if conn.index > 0:
            return await answer_all(conn)
        await conn.read_request()
        await conn.send(response(OK))
        await anyio.sleep(0.05)  # the client has put the connection back in the pool
        await conn.send(response(b"timed out", status=408))
        while await conn.read_request() is not None:
            await conn.send(response(sse("stale")))  # what a client that reused it would get

    with RawServer(answer) as server:
        pool = Pool(5.0)
        target = Target(server.url, {})
        try:
            assert await body_of(await pool.post(target, b"", b"1")) == OK
            if seen:
                await anyio.sleep(0.1)
            else:
                time.sleep(0.1)  # noqa: ASYNC251 - the loop must not run here
            assert await body_of(await pool.post(target, b"", b"2")) == OK
        finally:
            await pool.aclose()
        assert [(r.connection, r.body) for r in server.requests] == [(0, b"1"), (1, b"2")]


async def test_finished_responses_share_one_connection() -> None:
    with RawServer(answer_all) as server:
        pool = Pool(5.0)
        target = Target(server.url, {})
        try:
            for n in range(3):
                assert await body_of(await pool.post(target, b"", b"%d" % n)) == OK
        finally:
            await pool.aclose()
        assert [r.connection for r in server.requests] == [0, 0, 0]
