"""Graceful shutdown and crash safety, against a real server process.

SIGTERM: runs in flight may finish during the drain, new ones are refused with 503, the rest
are stopped with a last message saying why and recorded CANCELLED. SIGKILL: on the next start
the interrupted run is FAILED and nothing else in the database is damaged."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests import sse
from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow

SLOW = """
id: slow
inputs: {in-0: {default: "word"}}
nodes: {llm-0: {type: llm, provider: scripted, model: "echo?delay=0.2&repeat=50", prompt: "{in-0}"}}
outputs: {out-0: llm-0}
"""
SHORT = """
id: short
inputs: {in-0: {default: "a b c d e f"}}
nodes: {llm-0: {type: llm, provider: scripted, model: "echo?delay=0.1", prompt: "{in-0}"}}
outputs: {out-0: llm-0}
"""


class Reader(threading.Thread):
    """Streams one run in the background, keeping the raw text it received."""

    def __init__(self, server: Server, path: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{server.base_url}{path}"
        self.headers = {**server.auth(), "Content-Type": "application/json"}
        self.text = ""
        self.status: int | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url, headers=self.headers, json={}, timeout=30) as r:
                self.status = r.status_code
                for chunk in r.iter_text():
                    self.text += chunk
        except httpx.HTTPError as exc:
            self.error = exc

    def wait_for(self, needle: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            assert time.monotonic() < deadline, (needle, self.text)
            time.sleep(0.02)


class Blocking(threading.Thread):
    """A blocking run request in the background."""

    def __init__(self, server: Server, path: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{server.base_url}{path}"
        self.headers = server.auth()
        self.response: httpx.Response | None = None

    def run(self) -> None:
        self.response = httpx.post(self.url, headers=self.headers, json={}, timeout=30)


def rows(db: Path) -> dict[str, dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT id, flow_id, state, outputs, error, error_type FROM runs")
        return {row["id"]: {**dict(row), "outputs": json.loads(row["outputs"])} for row in found}


def test_sigterm_drains_then_stops_runs_with_a_last_message(tmp_path: Path):
    server = start_server(tmp_path, env={"FLOWSERVE_DRAIN_SECONDS": "1"})
    try:
        assert server.publish(SLOW).status_code == 201
        assert server.publish(SHORT).status_code == 201
        legacy = Reader(server, f"/stream_exported_flow?flow_id=slow&org={server.org}")
        v0 = Reader(server, f"/inference/v0/stream/{server.org}/slow")
        short = Reader(server, f"/inference/v0/stream/{server.org}/short")
        blocking_legacy = Blocking(server, f"/run_deployed_flow?flow_id=slow&org={server.org}")
        blocking_v0 = Blocking(server, f"/inference/v0/run/{server.org}/slow")
        for thread in (legacy, v0, blocking_legacy, blocking_v0):
            thread.start()
        legacy.wait_for("word word"), v0.wait_for('"word"')
        short.start()
        short.wait_for('"a"')
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        # Draining: still accepting, but a new run is refused and health says so.
        refused = httpx.post(
            f"{server.base_url}/inference/v0/run/{server.org}/short",
            headers=server.auth(),
            json={},
            timeout=10,
        )
        assert refused.status_code == 503, refused.text
        assert refused.json() == {"detail": "server shutting down"}
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        health = httpx.get(f"{server.base_url}/healthz", timeout=10)
        assert health.status_code == 503 and health.json() == {"status": "draining"}

        server.process.wait(timeout=15)
        exited_after = time.monotonic() - signalled
        for reader in (legacy, v0, short):
            reader.join(timeout=5)
            assert reader.status == 200 and reader.error is None, reader.error
        blocking_legacy.join(timeout=5), blocking_v0.join(timeout=5)
    finally:
        stop_server(server)
    assert exited_after < 1 + 5, exited_after  # drain, then at most a few seconds

    # The short run finished normally during the drain.
    short_frames = [json.loads(line) for line in short.text.splitlines()]
    assert short_frames[-1]["state"] == "COMPLETED"
    # The long ones were stopped, each client told why in its last message.
    last = list(sse.parse(legacy.text))[-1].json()
    assert last["error"] == "server shutting down" and last["error_type"] == "shutdown"
    legacy_run = last["run_id"]
    v0_last = json.loads(v0.text.splitlines()[-1])
    assert v0_last["state"] == "CANCELLED" and v0_last["error"] == "server shutting down"
    assert v0_last["metadata"]["error_type"] == "shutdown"
    # Blocking runs: the legacy route says 503 (try again), v0 returns the CANCELLED envelope.
    assert blocking_legacy.response is not None and blocking_legacy.response.status_code == 503
    assert blocking_legacy.response.headers["retry-after"] == "1"
    detail = blocking_legacy.response.json()["detail"]
    assert detail["error"] == "server shutting down" and detail["error_type"] == "shutdown"
    assert blocking_v0.response is not None and blocking_v0.response.status_code == 200
    envelope = blocking_v0.response.json()
    assert envelope["state"] == "CANCELLED" and envelope["error"] == "server shutting down"
    assert envelope["outputs"]["out-0"].startswith("word")

    records = rows(tmp_path / "flowserve.db")
    assert not [r for r in records.values() if r["state"] == "RUNNING"]
    assert records[short_frames[-1]["run_id"]]["state"] == "COMPLETED"
    for run_id, received in (
        (legacy_run, list(sse.parse(legacy.text))[-2].json()["out-0"]),
        (
            v0_last["run_id"],
            "".join(json.loads(x)["outputs"]["out-0"] for x in v0.text.splitlines()),
        ),
    ):
        record = records[run_id]
        assert record["state"] == "CANCELLED" and record["error_type"] == "shutdown"
        assert record["error"] == "server shutting down"
        partial = record["outputs"]["out-0"]
        assert partial.startswith("word word") and partial.startswith(received)
        assert len(partial.split()) < 50
    with sqlite3.connect(tmp_path / "flowserve.db") as conn:
        assert conn.execute("SELECT count(*) FROM instances").fetchone() == (0,)


def test_sigkill_mid_run_leaves_it_failed_on_restart_and_the_database_intact(tmp_path: Path):
    server = start_server(tmp_path, env={"FLOWSERVE_RECORD_SAVE_INTERVAL": "0.2"})
    try:
        assert server.publish(SLOW).status_code == 201
        assert server.publish(SHORT).status_code == 201
        done = httpx.post(
            f"{server.base_url}/inference/v0/run/{server.org}/short",
            headers=server.auth(),
            json={},
            timeout=30,
        ).json()
        reader = Reader(server, f"/inference/v0/stream/{server.org}/slow?delta=false")
        reader.start()
        reader.wait_for("word word")
        time.sleep(0.6)  # a few of the run's saves (record_save_interval)
        server.process.kill()
        server.process.wait(timeout=10)
        reader.join(timeout=10)
    finally:
        stop_server(server)
    frames = [json.loads(line) for line in reader.text.splitlines() if line.strip()]
    killed_run = frames[0]["run_id"]
    seen = frames[-1]["outputs"]["out-0"]  # cumulative: all its client saw
    assert rows(tmp_path / "flowserve.db")[killed_run]["state"] == "RUNNING"

    again = start_server(tmp_path, keys=(server.public_key, server.private_key))
    try:
        records = rows(tmp_path / "flowserve.db")
        assert records[killed_run]["state"] == "FAILED", records[killed_run]
        assert records[killed_run]["error"] == "interrupted"
        assert records[killed_run]["error_type"] == "interrupted"
        # What its client saw is in the record, up to the last save before the kill
        kept = records[killed_run]["outputs"]["out-0"]
        assert kept and seen.startswith(kept), (kept, seen)
        assert records[done["run_id"]]["state"] == "COMPLETED"
        assert records[done["run_id"]]["outputs"] == {"out-0": "a b c d e f"}
        # Flows and keys survived: the same keys list the flows and run one.
        listed = httpx.get(
            f"{again.base_url}/v1/orgs/{again.org}/flows",
            headers=again.auth(again.private_key),
            timeout=10,
        )
        assert {f["flow_id"] for f in listed.json()} == {"slow", "short"}
        r = httpx.post(
            f"{again.base_url}/run_deployed_flow?flow_id=short&org={again.org}",
            headers=again.auth(),
            json={"in-0": "still here"},
            timeout=30,
        )
        assert r.status_code == 200 and r.json() == {"out-0": "still here"}
        with sqlite3.connect(tmp_path / "flowserve.db") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("SELECT count(*) FROM instances").fetchone() == (1,)
    finally:
        stop_server(again)


def test_on_shared_postgresql_a_survivor_fails_only_the_dead_peers_run(tmp_path: Path):
    dbname = f"flowserve_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg(f'CREATE DATABASE "{dbname}"'))
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}"
    env = {"FLOWSERVE_HEARTBEAT_INTERVAL": "0.5", "FLOWSERVE_DRAIN_SECONDS": "1"}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = start_server(tmp_path / "a", env=env, database_url=url)
    b = start_server(tmp_path / "b", env=env, database_url=url, keys=(a.public_key, a.private_key))
    try:
        assert a.publish(SLOW).status_code == 201
        on_a = Reader(a, f"/inference/v0/stream/{a.org}/slow?delta=false")
        on_b = Reader(b, f"/inference/v0/stream/{b.org}/slow?delta=false")
        on_a.start(), on_b.start()
        on_a.wait_for("word word"), on_b.wait_for("word word")
        run_a = json.loads(on_a.text.splitlines()[0])["run_id"]
        run_b = json.loads(on_b.text.splitlines()[0])["run_id"]
        a.process.kill()
        a.process.wait(timeout=10)

        def record(run_id: str) -> dict:
            url = f"{b.base_url}/inference/v0/run/{b.org}/slow/metadata?run_id={run_id}"
            return httpx.get(url, headers=b.auth(b.private_key), timeout=10).json()

        deadline = time.monotonic() + 10
        while record(run_a)["state"] == "RUNNING":
            assert time.monotonic() < deadline, "the dead peer's run was never failed"
            time.sleep(0.2)
        assert record(run_a)["state"] == "FAILED" and record(run_a)["error"] == "interrupted"
        time.sleep(1.5)  # several more sweeps by b: its own run is left alone
        assert record(run_b)["state"] == "RUNNING"
        assert on_b.is_alive() and on_b.error is None
    finally:
        stop_server(a)
        stop_server(b)
        asyncio.run(_pg(f'DROP DATABASE "{dbname}" WITH (FORCE)'))
    on_b.join(timeout=10)
    last = json.loads(on_b.text.splitlines()[-1])
    assert last["state"] == "CANCELLED" and last["error"] == "server shutting down"


async def _pg(statement: str) -> None:
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


def test_a_run_whose_client_hangs_up_at_once_is_still_recorded(tmp_path: Path):
    # Found by the soak test: a run whose client left within record_delay (before its
    # RUNNING record was due) was cancelled with the record's task and never written.
    server = start_server(tmp_path)
    try:
        assert server.publish(SLOW).status_code == 201
        url = f"{server.base_url}/inference/v0/stream/{server.org}/slow"
        run_ids = []
        for _ in range(5):
            with httpx.stream("POST", url, headers=server.auth(), json={}, timeout=30) as r:
                run_ids.append(json.loads(next(r.iter_lines()))["run_id"])
        deadline = time.monotonic() + 10
        while any(
            rows(tmp_path / "flowserve.db").get(i, {}).get("state") != "CANCELLED" for i in run_ids
        ):
            assert time.monotonic() < deadline, rows(tmp_path / "flowserve.db")
            time.sleep(0.1)
    finally:
        stop_server(server)
