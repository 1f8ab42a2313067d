"""What a server does when what it shares goes away: Redis stopped mid-run (it keeps serving,
with per-process limits, and says so on /healthz; it reconnects by itself), PostgreSQL
restarted (the next requests succeed). Both on servers of their own, never the machine's."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from flowserve.auth import PUBLIC
from tests.cluster_env import PrivateRedis, private_postgres, private_redis, wait_until
from tests.conftest import start_server, stop_server
from tests.security import Stream, add_key, record, stop

__all__ = ["private_redis"]  # fixture

pytestmark = pytest.mark.slow

SLOW = """
id: slow
inputs: {in-0: {default: "one two three four five six seven eight nine ten eleven twelve"}}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.15", prompt: "{in-0}"}
outputs: {out-0: llm-0}
"""
WORDS = "one two three four five six seven eight nine ten eleven twelve"


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_redis_stopped_mid_run_the_server_keeps_serving_and_reconnects(
    tmp_path: Path, private_redis: PrivateRedis
):
    env = {
        "FLOWSERVE_REDIS_URL": private_redis.url,
        "FLOWSERVE_REDIS_PREFIX": "outage",
        "FLOWSERVE_WARM_UP": "false",
    }
    server = start_server(tmp_path, env=env)
    try:
        assert server.publish(SLOW).status_code == 201
        server.publish_file("echo.yaml")
        health = httpx.get(f"{server.base_url}/healthz", timeout=5)
        assert health.json() == {"status": "ok", "redis": "ok"}
        url = f"{server.base_url}/inference/v0/stream/{server.org}/slow?delta=false"
        with Stream(url, server.public_key) as stream:
            stream.read_until(lambda s: len(s.frames()) >= 3)
            run_id = stream.frames()[0]["run_id"]
            private_redis.stop()
            # The run streams on to its end, every word of it.
            stream.read_to_end()
            last = stream.frames()[-1]
        assert last["state"] == "COMPLETED" and last["outputs"]["out-0"].split() == WORDS.split()
        # Not taken out of the load balancer (200), but it says what is wrong.
        body = wait_until(
            lambda: httpx.get(f"{server.base_url}/healthz", timeout=5).json(),
            what="healthz degraded",
        )
        assert body == {"status": "degraded", "redis": "unreachable"}
        assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200
        # Runs go on, with this process's own limits (no 5xx storm): a key of 5 a minute
        # gets its 5, then 429.
        key = add_key(server.database_url, server.org, PUBLIC, rate_limit=5)
        run = f"{server.base_url}/run_deployed_flow?flow_id=echo&org={server.org}"
        statuses = [
            httpx.post(run, headers=server.auth(key), json={"in-0": "hi"}, timeout=30).status_code
            for _ in range(7)
        ]
        assert statuses == [200] * 5 + [429] * 2
        for _ in range(20):  # and many requests without a single 5xx
            r = httpx.post(run, headers=server.auth(), json={"in-0": "x"}, timeout=30)
            assert r.status_code == 200, r.text
        # A stop for a run this process does not have: it cannot ask the others.
        r = stop(server, "slow", "0" * 32, server.private_key)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        # The records were written: the database is still the truth.
        assert record(server, "slow", run_id)["state"] == "COMPLETED"
        assert metric(server.base_url, "flowserve_event_log_write_failures_total") > 0
        # One warning for the outage, not one per request.
        assert server.log().count("is unreachable") == 1

        private_redis.start()
        body = wait_until(
            lambda: (
                (h := httpx.get(f"{server.base_url}/healthz", timeout=5).json())["status"] == "ok"
                and h
            ),
            timeout=10,
            what="healthz ok again",
        )
        assert body == {"status": "ok", "redis": "ok"}
        assert "reachable again" in server.log()
        r = httpx.post(run, headers=server.auth(), json={"in-0": "back"}, timeout=30)
        assert r.status_code == 200 and r.json() == {"out-0": "back"}
    finally:
        stop_server(server)


def test_postgresql_restarted_the_next_requests_succeed(tmp_path: Path):
    with private_postgres() as pg:
        server = start_server(tmp_path, env={"FLOWSERVE_WARM_UP": "false"}, database_url=pg.url)
        try:
            server.publish_file("echo.yaml")
            run = f"{server.base_url}/inference/v0/run/{server.org}/echo"
            first = httpx.post(run, headers=server.auth(), json={"in-0": "before"}, timeout=30)
            assert first.status_code == 200, first.text
            pg.restart()  # every pooled connection is now dead
            # Reading a record and running a flow both go to the database at once.
            assert record(server, "echo", first.json()["run_id"])["state"] == "COMPLETED"
            again = httpx.post(run, headers=server.auth(), json={"in-0": "after"}, timeout=30)
            assert again.status_code == 200, again.text
            assert again.json()["outputs"] == {"out-0": "after"}
            run_id = again.json()["run_id"]
            rec = wait_until(lambda: record(server, "echo", run_id), what="the new record")
            assert rec["state"] == "COMPLETED"
            listed = httpx.get(
                f"{server.base_url}/v1/orgs/{server.org}/flows",
                headers=server.auth(server.private_key),
                timeout=10,
            )
            assert listed.status_code == 200 and [f["flow_id"] for f in listed.json()] == ["echo"]
            assert "Traceback" not in server.log(), server.log()[-3000:]
        finally:
            stop_server(server)
