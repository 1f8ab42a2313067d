"""Resume on any process (contract 2.5, issue 12): two servers share PostgreSQL and Redis; a
stream started on A and cut is resumed on B, every token once; when A is killed mid-run, a
client resuming on B is told the run was interrupted, and a survivor records it FAILED with
what had been streamed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests import sse
from tests.cluster_env import pg_url, prefix, shared_redis, wait_until  # noqa: F401 (fixtures)
from tests.conftest import Server, start_server, stop_server
from tests.test_resume import COUNTED, WORDS, cut_stream, deltas, resume

pytestmark = pytest.mark.slow

SLOW = COUNTED.replace("id: counted", "id: slow").replace("delay=0.03", "delay=0.1")


@pytest.fixture
def pair(tmp_path, pg_url, shared_redis, prefix) -> Iterator[tuple[Server, Server]]:  # noqa: F811
    env = {
        "FLOWSERVE_REDIS_URL": shared_redis,
        "FLOWSERVE_REDIS_PREFIX": prefix,
        "FLOWSERVE_HEARTBEAT_INTERVAL": "0.5",
        "FLOWSERVE_RECORD_DELAY": "0.05",
        "FLOWSERVE_RESUME_GRACE": "3",
        "FLOWSERVE_DRAIN_SECONDS": "1",
    }
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = start_server(tmp_path / "a", env=env, database_url=pg_url)
    b = start_server(
        tmp_path / "b", env=env, database_url=pg_url, keys=(a.public_key, a.private_key)
    )
    try:
        assert a.publish(COUNTED).status_code == 201
        assert a.publish(SLOW).status_code == 201
        yield a, b
    finally:
        stop_server(a)
        stop_server(b)


def url(server: Server, flow: str = "counted") -> str:
    return f"{server.base_url}/inference/v0/stream/{server.org}/{flow}?sse=true"


def record(server: Server, flow: str, run_id: str) -> dict:
    response = httpx.get(
        f"{server.base_url}/inference/v0/run/{server.org}/{flow}/metadata",
        params={"run_id": run_id},
        headers=server.auth(server.private_key),
    )
    return response.json() if response.status_code == 200 else {}


def test_a_stream_cut_on_one_process_resumes_on_the_other_exactly_once(pair):
    a, b = pair
    first = cut_stream(url(a), a, count=6)
    run_id = first[-1].id.split(":")[0]
    resumed = resume(url(b), b, first[-1].id)
    assert resumed.status_code == 200, resumed.text
    rest = list(sse.parse(resumed.text))
    assert deltas(first) + deltas(rest) == WORDS  # every token once, in order
    final = rest[-1].json()
    assert final["state"] == "COMPLETED" and final["run_id"] == run_id
    out1 = "".join(m.json()["outputs"]["out-1"] for m in first + rest)
    assert out1 == f"done: {WORDS}"
    done = wait_until(lambda: record(b, "counted", run_id).get("state") == "COMPLETED")
    assert done
    runs = httpx.get(
        f"{b.base_url}/v1/orgs/{b.org}/runs",
        params={"flow_id": "counted"},
        headers=b.auth(b.private_key),
    ).json()["runs"]
    assert [r["run_id"] for r in runs] == [run_id]  # one run: the resume ran nothing


def test_a_client_resuming_a_run_whose_process_died_is_told_it_was_interrupted(pair):
    a, b = pair
    first = cut_stream(url(a, "slow"), a, count=8)
    seen = deltas(first)
    run_id = first[-1].id.split(":")[0]
    a.process.kill()
    a.process.wait(timeout=10)
    killed = time.monotonic()
    resumed = resume(url(b, "slow"), b, first[-1].id)
    told = time.monotonic() - killed
    assert resumed.status_code == 200, resumed.text
    rest = list(sse.parse(resumed.text))
    final = rest[-1].json()
    assert final["state"] == "FAILED" and "interrupted" in final["error"], final
    assert told < 3 * 2.0 + 2.0  # within 3 of the cluster's heartbeats (2 s), and a margin
    # the survivor records it FAILED and keeps what was streamed before the kill
    stored = wait_until(
        lambda: (r := record(b, "slow", run_id)) and r["state"] == "FAILED" and r,
        timeout=15,
        what="the run recorded FAILED by the survivor",
    )
    assert stored["error_type"] == "interrupted"
    # (its owner writes each loop turn's events to Redis right after sending them: the very
    # last ones may not have reached the log when it was killed)
    kept = stored["outputs"]["out-0"]
    assert (seen + deltas(rest)).startswith(kept)
    assert kept.startswith(deltas(first[:-1])) and kept
