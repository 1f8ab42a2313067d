"""A finished stream's objects are freed by reference counting, not left to the cyclic garbage
collector: a full collection stops the event loop, and every open stream with it, for as long
as it scans (flowserve.http.app makes full collections rarer on the strength of this).

In-process, because it inspects this process's collector: the app is served by uvicorn (uvloop,
httptools, as in production) on a thread, and real HTTP clients stream from it."""

from __future__ import annotations

import gc
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from flowserve.config import Settings
from flowserve.http.app import create_app
from tests import sse
from tests.conftest import FLOWS, make_org

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, str, object]]:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'flowserve.db'}"
    public, private = make_org(database_url, "acme")
    app = create_app(Settings(database_url=database_url, warm_up=False, record_delay=0.05))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(
        app, loop="uvloop", http="httptools", log_config=None, log_level="critical"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thresholds = gc.get_threshold()
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        for name in ("echo.yaml", "chain.yaml", "failing.yaml"):
            r = httpx.post(
                f"{base_url}/v1/orgs/acme/flows",
                content=(FLOWS / name).read_text().encode(),
                headers={"Authorization": f"Bearer {private}"},
                timeout=30,
            )
            assert r.status_code in (200, 201), r.text
        yield base_url, public, app
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
        gc.set_threshold(*thresholds)  # what the app's start-up changed for this process
        gc.unfreeze()


def test_finished_streams_leave_no_reference_cycles(served):
    base_url, public, app = served
    auth = {"Authorization": f"Bearer {public}"}
    words = " ".join(f"w{i}" for i in range(40))  # 40 tokens, 10 ms apart: past record_delay
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what any collection finds unreachable is kept to look at
    try:
        with httpx.Client(timeout=30, headers=auth) as client:
            for path in (
                "/stream_exported_flow?org=acme&flow_id=echo",
                "/stream_exported_flow?org=acme&flow_id=echo&delta=true",
                "/inference/v0/stream/acme/echo",
                "/inference/v0/stream/acme/echo?sse=true",
                "/inference/v0/stream/acme/chain?sse=true",
                "/stream_exported_flow?org=acme&flow_id=failing",
            ):
                r = client.post(base_url + path, content=json.dumps({"in-0": words}))
                assert r.status_code == 200, r.text
            # And clients that leave in the middle of a stream, of one node and of several.
            for flow in ("echo", "chain"):
                url = f"{base_url}/stream_exported_flow?org=acme&flow_id={flow}"
                with client.stream("POST", url, content=json.dumps({"in-0": words})) as r:
                    for chunk in r.iter_text():
                        if list(sse.parse(chunk)):
                            break
        runs = app.state.flowserve.runs  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while (
            runs.active or sum(runs.metrics.finished.values()) < 8
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(runs.metrics.finished.values()) == 8 and not runs.active
        time.sleep(0.2)  # the last records are written
        gc.collect()
        left = sorted(
            {
                type(o).__qualname__
                for o in gc.garbage
                if type(o).__module__.startswith("flowserve")
                or getattr(o, "__qualname__", "").startswith(
                    ("RunStreamResponse", "Runner", "RunService")
                )
            }
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []
