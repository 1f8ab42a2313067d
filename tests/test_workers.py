"""``flowserve serve --workers N``: N processes on one port, sharing PostgreSQL and Redis.

Each worker is its own instance (the ``x-flowserve-instance`` header of ``/healthz`` names
the one that answered); connections are spread over them; SIGTERM drains every one; a worker
that dies is replaced and its runs failed as interrupted; N > 1 without Redis is refused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests import sse
from tests.cluster_env import pg_url, prefix, shared_redis, wait_until  # noqa: F401 (fixtures)
from tests.conftest import Server, free_port, make_org
from tests.test_resume import COUNTED, WORDS, cut_stream, deltas, resume
from tests.test_shutdown import SLOW, Reader

pytestmark = pytest.mark.slow

SHORT = COUNTED.replace("id: counted", "id: short").replace("delay=0.03", "delay=0")


def start_workers(tmp: Path, database_url: str, env: dict[str, str], count: int = 2) -> Server:
    """``flowserve serve --workers count``, once every worker answers."""
    public, private = make_org(database_url, "acme")
    port = free_port()
    log_path = tmp / "server.log"
    full_env = {
        **os.environ,
        "FLOWSERVE_DATABASE_URL": database_url,
        "FLOWSERVE_PORT": str(port),
        "FLOWSERVE_HEARTBEAT_INTERVAL": "0.5",
        "FLOWSERVE_RECORD_DELAY": "0.05",
        "FLOWSERVE_DRAIN_SECONDS": "1",
        **env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "flowserve", "serve", "--workers", str(count)],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    server = Server(
        f"http://127.0.0.1:{port}", "acme", public, private, database_url, process, log_path
    )
    try:
        wait_until(
            lambda: process.poll() is not None or len(instances(server)) == count,
            timeout=90,
            what="every worker registered",
        )
        assert process.poll() is None, server.log()
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def query(server: Server, sql: str) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(server.database_url.replace("+asyncpg", ""), timeout=5)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(go())


def instances(server: Server) -> dict[str, int]:
    """The live instances registered in the database: id -> pid."""
    try:
        return {r["id"]: r["pid"] for r in query(server, "SELECT id, pid FROM instances")}
    except asyncpg.UndefinedTableError:  # not created yet
        return {}


def parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def instance_answering(server: Server) -> str:
    with httpx.Client(timeout=10) as client:  # a new connection each time
        response = client.get(f"{server.base_url}/healthz")
    assert response.status_code == 200, response.text
    return response.headers["x-flowserve-instance"]


@pytest.fixture
def workers(tmp_path, pg_url, shared_redis, prefix) -> Iterator[Server]:  # noqa: F811
    env = {"FLOWSERVE_REDIS_URL": shared_redis, "FLOWSERVE_REDIS_PREFIX": prefix}
    server = start_workers(tmp_path, pg_url, env)
    try:
        yield server
    finally:
        stop(server)


def test_two_workers_are_two_instances_on_one_port_sharing_the_work(workers):
    registered = instances(workers)
    assert len(registered) == 2 and len(set(registered.values())) == 2
    supervisor = workers.process.pid
    assert supervisor not in registered.values()
    assert {parent_of(pid) for pid in registered.values()} == {supervisor}

    # New connections reach both (the kernel hands each to one of the workers).
    seen: set[str] = set()
    for _ in range(200):
        seen.add(instance_answering(workers))
        if len(seen) == 2:
            break
    assert seen == set(registered)

    # A flow published through one worker runs on any; a stream cut on one resumes on
    # whichever worker the next connection reaches, every token once.
    assert workers.publish(COUNTED).status_code == 201
    assert workers.publish(SHORT).status_code == 201
    for _ in range(6):
        response = httpx.post(
            f"{workers.base_url}/inference/v0/run/acme/short",
            headers=workers.auth(),
            json={},
            timeout=30,
        )
        assert response.status_code == 200 and response.json()["outputs"]["out-0"] == WORDS
    url = f"{workers.base_url}/inference/v0/stream/acme/counted?sse=true"
    for _ in range(3):
        first = cut_stream(url, workers, count=6)
        rest = list(sse.parse(resume(url, workers, first[-1].id).text))
        assert deltas(first) + deltas(rest) == WORDS
        assert rest[-1].json()["state"] == "COMPLETED"


def test_sigterm_drains_every_worker_then_stops_their_runs(workers):
    assert workers.publish(SLOW).status_code == 201
    readers: list[Reader] = []

    def owners() -> set[str]:
        rows = query(workers, "SELECT owner FROM runs WHERE state = 'RUNNING'")
        return {r["owner"] for r in rows}

    # Streams until each worker has at least one (each new connection lands on either).
    for _ in range(12):
        reader = Reader(workers, "/inference/v0/stream/acme/slow")
        reader.start()
        reader.wait_for('"word"')
        readers.append(reader)
        wait_until(lambda: len(query(workers, "SELECT id FROM runs")) == len(readers))
        wait_until(lambda: len(owners()) >= 1)
        if owners() == set(instances(workers)):
            break
    assert owners() == set(instances(workers)), "the streams all landed on one worker"

    workers.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.3)
    for _ in range(4):  # whichever worker answers is draining
        refused = httpx.post(
            f"{workers.base_url}/inference/v0/run/acme/slow",
            headers=workers.auth(),
            json={},
            timeout=10,
        )
        assert refused.status_code == 503 and refused.json() == {"detail": "server shutting down"}
        health = httpx.get(f"{workers.base_url}/healthz", timeout=10)
        assert health.status_code == 503 and health.json() == {"status": "draining"}
    assert workers.process.wait(timeout=15) == 0
    assert time.monotonic() - signalled < 1 + 5 + 2  # the drain, the grace, a margin

    for reader in readers:
        reader.join(timeout=5)
        assert reader.status == 200 and reader.error is None, reader.error
        last = json.loads(reader.text.splitlines()[-1])
        assert last["state"] == "CANCELLED" and last["error"] == "server shutting down"
    assert not query(workers, "SELECT id FROM runs WHERE state <> 'CANCELLED'")
    assert instances(workers) == {}  # each worker deregistered itself
    assert "worker 1" in workers.log() and "stopped" in workers.log()


def test_a_second_ctrl_c_skips_the_rest_of_every_workers_drain(
    tmp_path,
    pg_url,  # noqa: F811
    shared_redis,  # noqa: F811
    prefix,  # noqa: F811
):
    env = {
        "FLOWSERVE_REDIS_URL": shared_redis,
        "FLOWSERVE_REDIS_PREFIX": prefix,
        "FLOWSERVE_DRAIN_SECONDS": "30",
    }
    server = start_workers(tmp_path, pg_url, env)
    try:
        assert server.publish(SLOW).status_code == 201
        reader = Reader(server, "/inference/v0/stream/acme/slow")
        reader.start()
        reader.wait_for('"word"')
        server.process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        assert server.process.wait(timeout=15) == 0
        assert time.monotonic() - signalled < 5  # not the 30 s drain
        reader.join(timeout=5)
        last = json.loads(reader.text.splitlines()[-1])
        assert last["state"] == "CANCELLED" and last["error"] == "server shutting down"
    finally:
        stop(server)


def test_a_worker_that_dies_is_replaced_and_its_runs_failed(workers):
    assert workers.publish(SLOW).status_code == 201
    before = instances(workers)
    reader = Reader(workers, "/inference/v0/stream/acme/slow?delta=false")
    reader.start()
    reader.wait_for('"word word"')
    run_id = json.loads(reader.text.splitlines()[0])["run_id"]
    owner = wait_until(lambda: query(workers, f"SELECT owner FROM runs WHERE id = '{run_id}'"))
    os.kill(before[owner[0]["owner"]], signal.SIGKILL)
    reader.join(timeout=10)

    def record() -> dict:
        response = httpx.get(
            f"{workers.base_url}/inference/v0/run/acme/slow/metadata",
            params={"run_id": run_id},
            headers=workers.auth(workers.private_key),
            timeout=10,
        )
        return response.json()

    failed = wait_until(lambda: (r := record())["state"] == "FAILED" and r, timeout=15)
    assert failed["error"] == "interrupted"
    # The supervisor started another worker: two instances again, one of them new.
    now = wait_until(
        lambda: (i := instances(workers)) and len(i) == 2 and set(i) != set(before) and i,
        timeout=60,
        what="a new worker registered",
    )
    assert len(set(now) & set(before)) == 1
    assert workers.process.poll() is None and "died (exit code -9)" in workers.log()
    response = httpx.post(
        f"{workers.base_url}/inference/v0/run/acme/slow",
        headers=workers.auth(),
        json={"in-0": "x"},
        timeout=30,
    )
    assert response.status_code == 200


def test_workers_whose_supervisor_is_killed_drain_and_exit_by_themselves(workers):
    pids = list(instances(workers).values())
    workers.process.kill()
    workers.process.wait(timeout=10)

    def gone(pid: int) -> bool:  # exited (a zombie, if nothing reaps orphans here)
        try:
            return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True

    wait_until(lambda: all(gone(pid) for pid in pids), timeout=15, what="the workers gone")
    assert instances(workers) == {}  # each deregistered itself: they stopped, not died
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{workers.base_url}/healthz", timeout=5)


def test_several_workers_without_redis_are_refused_naming_the_setting(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FLOWSERVE_REDIS_URL"}
    env["FLOWSERVE_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'flowserve.db'}"
    env["FLOWSERVE_PORT"] = str(free_port())
    command = [sys.executable, "-m", "flowserve", "serve"]
    refused = subprocess.run(
        [*command, "--workers", "2"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2, refused.stderr
    message = " ".join(refused.stderr.split())
    assert "--workers 2 needs Redis: set redis_url (FLOWSERVE_REDIS_URL" in message
    assert "limits count per worker" in message
    assert not (tmp_path / "flowserve.db").exists()  # refused before anything was made
    for bad in ("0", "-1", "65", "two"):
        result = subprocess.run(
            [*command, "--workers", bad], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2 and "--workers" in result.stderr, (bad, result.stderr)
