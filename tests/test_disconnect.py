"""A client that leaves cancels its run: generation stops and the run is recorded CANCELLED
with the partial output. These servers keep no run for its client to resume
(``resume_grace=0``); with the default grace the same happens after it (tests/test_resume.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests import sse
from tests.conftest import Server, published_server
from tests.local_reference import direct

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from published_server(
        tmp_path_factory.mktemp("server"), env={"FLOWSERVE_RESUME_GRACE": "0"}
    )


def record(server: Server, flow: str, run_id: str) -> dict:
    url = f"{server.base_url}/inference/v0/run/{server.org}/{flow}/metadata?run_id={run_id}"
    return httpx.get(url, headers=server.auth(server.private_key), timeout=10).json()


def settled(server: Server, flow: str, run_id: str, since: float) -> dict:
    """The run's record once it is no longer RUNNING (or after 10 s from ``since``). A run
    that ended before its RUNNING row was due has no record (404) until its final one is
    written, a moment after the client left."""
    rec = record(server, flow, run_id)
    while rec.get("state", "RUNNING") == "RUNNING" and time.monotonic() - since < 10:
        time.sleep(0.05)
        rec = record(server, flow, run_id)
    return rec


def test_client_disconnect_cancels_the_run(server: Server):
    url = f"{server.base_url}/stream_exported_flow?flow_id=long&org={server.org}"
    received = ""
    run_id = None
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", url, headers=server.auth(), json={}) as response,
    ):
        assert response.status_code == 200
        buffer = ""
        for chunk in response.iter_text():
            buffer += chunk
            messages = list(sse.parse(buffer[: buffer.rfind("\n\n") + 2]))
            if messages:
                run_id = messages[-1].id.split(":")[0]
                received = messages[-1].json()["out-0"]
            if len(received.split()) >= 8:
                break
        left_at = time.monotonic()
    # The connection is closed here. The run must end promptly, not after 2000 tokens.
    rec = settled(server, "long", run_id, left_at)
    assert rec["state"] == "CANCELLED", rec
    assert time.monotonic() - left_at < 3
    partial = rec["outputs"]["out-0"]
    assert partial.startswith(received) and 0 < len(partial) < 2000 * 3
    # Generation stopped: tokens generated is what was sent plus the few in flight, far
    # below the 2000 the node asked for.
    generated = rec["usage"]["llm-0"]["completion_tokens"]
    assert generated is not None and generated < 60, generated
    # And the model is free: a new request streams at once.
    started = time.monotonic()
    r = httpx.post(
        f"{server.base_url}/run_deployed_flow?flow_id=local&org={server.org}",
        headers=server.auth(),
        content=json.dumps({"in-0": "Hi"}),
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    assert elapsed < 5
    # served as on a fresh context: what llama-cpp-python answers directly (tests/flows/local)
    assert r.json()["out-0"] == direct("Hi", "You are a helpful assistant.", max_tokens=48)


def test_client_leaving_an_ndjson_stream_cancels_the_run(server: Server):
    """The v0 stream without SSE has no keepalive timer; leaving it is still noticed."""
    url = f"{server.base_url}/inference/v0/stream/{server.org}/long"
    run_id = None
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", url, headers=server.auth(), json={}) as response,
    ):
        assert response.status_code == 200
        for n, line in enumerate(response.iter_lines()):
            run_id = json.loads(line)["run_id"]
            if n >= 8:
                break
        left_at = time.monotonic()
    rec = settled(server, "long", run_id, left_at)
    assert rec["state"] == "CANCELLED", rec
    assert time.monotonic() - left_at < 3
    assert rec["usage"]["llm-0"]["completion_tokens"] < 60


def test_a_prompt_too_long_for_the_embedded_model_is_a_422_before_the_run(server: Server):
    """99 KB of input on the embedded model: refused with the numbers before anything runs
    (it used to be a 502 'local model failed: ValueError' after two retries)."""
    r = httpx.post(
        f"{server.base_url}/run_deployed_flow?flow_id=local&org={server.org}",
        headers=server.auth(),
        json={"in-0": "word " * 20_000},
        timeout=60,
    )
    assert r.status_code == 422, r.text[:300]
    [problem] = r.json()["detail"]
    assert "llm-0" in problem["msg"] and "context of 2048 tokens" in problem["msg"], problem
