"""Stopping a run (contract 2.4): upstream generation really stops, the run is recorded
CANCELLED with its partial output, and the streaming client is told last."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from flowserve.auth import PUBLIC
from tests.conftest import Server
from tests.security import Stream, add_key, record, stop, wait_for_state

pytestmark = pytest.mark.slow


def words_sent(s: Stream) -> int:
    messages = s.messages()
    return len(messages[-1].json().get("out-0", "").split()) if messages else 0


def test_stop_legacy_stream_stops_generation(server: Server):
    url = f"{server.base_url}/stream_exported_flow?flow_id=long&org={server.org}"
    with Stream(url, server.public_key) as s:
        assert s.status == 200
        s.read_until(lambda s: words_sent(s) >= 5)
        run_id = s.messages()[-1].id.split(":")[0]
        seen = s.messages()[-1].json()["out-0"]
        # The public key that started the run may stop it.
        r = stop(server, "long", run_id, server.public_key)
        assert r.status_code == 200 and r.json() == {"run_id": run_id, "stopped": True}
        stopped_at = time.monotonic()
        s.read_to_end(timeout=5)
        assert time.monotonic() - stopped_at < 3
    last = s.messages()[-1].json()
    assert last == {
        "error": "run stopped",
        "error_type": "cancelled",
        "node_id": None,
        "run_id": run_id,
    }
    # The stop answer came after the record was written: it is CANCELLED already.
    rec = record(server, "long", run_id)
    assert rec["state"] == "CANCELLED"
    assert rec["outputs"]["out-0"].startswith(seen)
    generated = rec["usage"]["llm-0"]["completion_tokens"]
    assert generated is not None and generated < 60, generated  # far from the 2000 asked for
    time.sleep(1.0)
    assert record(server, "long", run_id)["usage"] == rec["usage"]  # and it stays stopped


def test_stop_v0_stream_with_the_private_key(server: Server):
    url = f"{server.base_url}/inference/v0/stream/{server.org}/long"
    with Stream(url, server.public_key) as s:
        s.read_until(lambda s: len(s.frames()) >= 6)
        run_id = s.frames()[0]["run_id"]
        r = stop(server, "long", run_id, server.private_key)  # any private key of the org
        assert r.status_code == 200
        s.read_to_end(timeout=5)
    last = s.frames()[-1]
    assert last["state"] == "CANCELLED" and last["error"] == "run stopped"
    assert last["metadata"]["error_type"] == "cancelled"
    rec = record(server, "long", run_id)
    assert rec["state"] == "CANCELLED"
    assert rec["usage"]["llm-0"]["completion_tokens"] < 60


def test_stop_v0_sse_stream(server: Server):
    url = f"{server.base_url}/inference/v0/stream/{server.org}/long?sse=true"
    with Stream(url, server.public_key) as s:
        s.read_until(lambda s: len(s.messages()) >= 4)
        run_id = s.messages()[0].json()["run_id"]
        assert stop(server, "long", run_id, server.public_key).status_code == 200
        s.read_to_end(timeout=5)
    last = s.messages()[-1].json()
    assert last["state"] == "CANCELLED" and last["error"] == "run stopped"


def test_stop_a_blocking_run(server: Server):
    server.publish("""
id: slow-echo
inputs: {in-0: {}}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.2", prompt: "{in-0}"}
outputs: {out-0: llm-0}
""")
    result: dict = {}

    def run() -> None:
        result["response"] = httpx.post(
            f"{server.base_url}/inference/v0/run/{server.org}/slow-echo",
            json={"in-0": " ".join(["word"] * 50)},
            headers=server.auth(),
            timeout=30,
        )

    thread = threading.Thread(target=run)
    thread.start()
    # A blocking run's id is only in its answer: find it in the database.
    run_id = None
    deadline = time.monotonic() + 10
    while run_id is None and time.monotonic() < deadline:
        time.sleep(0.1)
        run_id = _running_run_id(server, "slow-echo")
    assert run_id is not None
    time.sleep(0.6)  # a few words in
    assert stop(server, "slow-echo", run_id, server.private_key).status_code == 200
    thread.join(10)
    body = result["response"].json()
    assert body["run_id"] == run_id and body["state"] == "CANCELLED"
    assert body["metadata"]["error_type"] == "cancelled"
    assert 0 < len(body["outputs"]["out-0"]) < len(" ".join(["word"] * 50))


def _running_run_id(server: Server, flow_id: str) -> str | None:
    import sqlite3

    path = server.database_url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        row = db.execute(
            "SELECT id FROM runs WHERE flow_id = ? AND state = 'RUNNING' ORDER BY queued_at DESC",
            (flow_id,),
        ).fetchone()
    return row[0] if row else None


def test_stop_refusals_all_look_alike(server: Server):
    other_public = add_key(server.database_url, server.org, PUBLIC)
    url = f"{server.base_url}/stream_exported_flow?flow_id=long&org={server.org}"
    with Stream(url, server.public_key) as s:
        s.read_until(lambda s: words_sent(s) >= 1)
        run_id = s.messages()[-1].id.split(":")[0]
        unknown = stop(server, "long", "f" * 32, server.private_key)
        assert unknown.status_code == 404
        expected = unknown.json()["detail"].replace("f" * 32, run_id)
        for key, flow in [
            (other_public, "long"),  # another public key of the same org
            (server.private_key, "echo"),  # the run is not of that flow
        ]:
            r = stop(server, flow, run_id, key)
            assert r.status_code == 404 and r.json()["detail"] == expected
        assert stop(server, "long", run_id, "nonsense").status_code == 401
        assert stop(server, "long", run_id, "fs-pub-aaaaaaaaaaaa-" + "b" * 40).status_code == 401
        missing = httpx.post(
            f"{server.base_url}/inference/v0/stop/{server.org}/long",
            headers=server.auth(),
            timeout=10,
        )
        assert missing.status_code == 422
        # None of that stopped the run: it is still streaming.
        before = words_sent(s)
        s.read_until(lambda s: words_sent(s) >= before + 3)
        assert stop(server, "long", run_id, server.public_key).status_code == 200
        s.read_to_end(timeout=5)
    # A run that has ended cannot be stopped, and says so the same way.
    finished = stop(server, "long", run_id, server.private_key)
    assert finished.status_code == 404 and finished.json()["detail"] == expected
    rec = wait_for_state(server, "long", run_id, lambda st: st != "RUNNING")
    assert rec["state"] == "CANCELLED"
