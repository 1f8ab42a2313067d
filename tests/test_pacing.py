"""The set-up gate (flowserve.http.stream): a burst of new streams is set up a few at a time,
in arrival order, with the open streams' sockets read between them; a slot is always given
back, whether the request streams, fails, or its caller gives up while waiting."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from flowserve.http.stream import SetupGate
from tests import sse
from tests.conftest import start_server, stop_server

pytestmark = pytest.mark.anyio


async def test_a_pass_gives_its_slot_back_once() -> None:
    gate = SetupGate(2)
    first, second = await gate.enter(), await gate.enter()
    third = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    assert not third.done()  # both slots taken
    first()
    first()  # a second call gives nothing more back
    done = await asyncio.wait_for(third, 1)
    fourth = asyncio.create_task(gate.enter())
    await asyncio.sleep(0.01)
    assert not fourth.done()  # still two holders: second and third
    second()
    (await asyncio.wait_for(fourth, 1))()
    done()


async def test_a_burst_is_let_in_in_arrival_order_with_other_work_in_between() -> None:
    gate = SetupGate(1)
    holder = await gate.enter()
    log: list[str] = []

    async def set_up(n: int) -> None:
        done = await gate.enter()
        log.append(f"set-up {n}")
        # What the gate is for: work already due (a socket read) runs before the next set-up.
        asyncio.get_running_loop().call_soon(log.append, f"read after {n}")
        done()

    waiters = [asyncio.create_task(set_up(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert log == []
    holder()
    await asyncio.gather(*waiters)
    await asyncio.sleep(0)
    assert log == [
        "set-up 0",
        "read after 0",
        "set-up 1",
        "read after 1",
        "set-up 2",
        "read after 2",
    ]


async def test_a_waiter_that_gives_up_takes_no_slot() -> None:
    gate = SetupGate(1)
    holder = await gate.enter()
    leaving = asyncio.create_task(gate.enter())
    staying = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    holder()
    done = await asyncio.wait_for(staying, 1)
    done()
    (await asyncio.wait_for(gate.enter(), 1))()


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """A server that sets up one stream at a time, with a quick and a paced flow."""
    server = start_server(
        tmp_path_factory.mktemp("pacing"), env={"FLOWSERVE_MAX_CONCURRENT_SETUPS": "1"}
    )
    server.publish("""
id: quick
inputs: {in-0: {default: "a b"}}
nodes: {llm-0: {type: llm, provider: scripted, model: "echo", prompt: "{in-0}"}}
outputs: {out-0: llm-0}
""")
    server.publish("""
id: paced
inputs: {in-0: {default: "a b c d e"}}
nodes: {llm-0: {type: llm, provider: scripted, model: "echo?delay=0.05", prompt: "{in-0}"}}
outputs: {out-0: llm-0}
""")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.mark.slow
def test_a_client_sending_its_body_slowly_does_not_hold_up_other_streams(narrow):
    server = narrow
    port = int(server.base_url.rsplit(":", 1)[1])
    path = f"/stream_exported_flow?flow_id=quick&org={server.org}"
    stalled: list[socket.socket] = []
    try:
        for _ in range(3):  # more slow clients than the gate has slots
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.public_key}"
                "\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
            )
            stalled.append(sock)
        time.sleep(0.3)
        started = time.monotonic()
        r = httpx.post(server.base_url + path, headers=server.auth(), json={}, timeout=10)
        assert r.status_code == 200
        assert [m.json() for m in sse.parse(r.text)][-1] == {"out-0": "a b"}
        assert time.monotonic() - started < 2
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.slow
def test_with_one_set_up_at_a_time_every_request_is_still_served(narrow):
    """Width 1: a burst of streams all complete, and answers without a run (401, 404)
    give their slot back, so the requests behind them are not stuck."""
    server = narrow
    url = f"{server.base_url}/stream_exported_flow?org={server.org}&flow_id="

    def stream(flow: str, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(url + flow, content=json.dumps({}), headers=headers, timeout=30)

    good = server.auth()
    calls = [("paced", good)] * 12 + [
        ("paced", {"authorization": "Bearer nope"}),
        ("missing", good),
    ] * 3
    with ThreadPoolExecutor(len(calls)) as pool:
        responses = list(pool.map(lambda c: stream(*c), calls))
    ok = [r for (flow, h), r in zip(calls, responses, strict=True) if h is good and flow == "paced"]
    assert len(ok) == 12
    for r in ok:
        assert r.status_code == 200
        assert [m.json() for m in sse.parse(r.text)][-1] == {"out-0": "a b c d e"}
    statuses = sorted(r.status_code for r in responses if r not in ok)
    assert statuses == [401] * 3 + [404] * 3
    # And the gate is free again: one more stream is served at once.
    last = stream("paced", good)
    assert last.status_code == 200
