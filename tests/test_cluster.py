"""Two server processes on one PostgreSQL database and one Redis, as behind a load balancer:
a stop received by either reaches the run wherever it is, the limits are counted once for
both, and a revoked key or a published flow is seen by both within a second (their caches
hold entries for a minute, so only the invalidation can explain it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from flowserve.auth import PRIVATE, PUBLIC
from flowserve.cli import app as cli_app
from flowserve.cluster.redis import LIVENESS
from tests.cluster_env import pg_url, prefix, shared_redis, wait_until
from tests.conftest import Server, start_server, stop_server
from tests.security import Stream, add_key, record, stop

__all__ = ["pg_url", "prefix", "shared_redis"]  # fixtures

pytestmark = pytest.mark.slow

SLOW = """
id: slow
inputs: {in-0: {default: "one two three four five six seven eight nine ten eleven twelve"}}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.25", prompt: "{in-0}"}
outputs: {out-0: llm-0}
"""


def versioned(text: str) -> str:
    return f"""
id: versioned
inputs: {{in-0: {{default: "x"}}}}
nodes:
  llm-0: {{type: llm, provider: scripted, model: "echo?text={text}", prompt: "{{in-0}}"}}
outputs: {{out-0: llm-0}}
"""


@pytest.fixture
def pair(
    tmp_path: Path, pg_url: str, shared_redis: str, prefix: str
) -> Iterator[tuple[Server, Server]]:
    env = {
        "FLOWSERVE_REDIS_URL": shared_redis,
        "FLOWSERVE_REDIS_PREFIX": prefix,
        "FLOWSERVE_KEY_CACHE_TTL": "60",
        "FLOWSERVE_FLOW_CACHE_TTL": "60",
        "FLOWSERVE_MAX_CONCURRENT_RUNS_PER_KEY": "2",
        "FLOWSERVE_MAX_CONCURRENT_RUNS": "3",
        "FLOWSERVE_WARM_UP": "false",
        "FLOWSERVE_DRAIN_SECONDS": "1",
    }
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = start_server(tmp_path / "a", env=env, database_url=pg_url)
    try:
        b = start_server(
            tmp_path / "b", env=env, database_url=pg_url, keys=(a.public_key, a.private_key)
        )
        try:
            assert a.publish(SLOW).status_code == 201
            a.publish_file("echo.yaml")
            yield a, b
        finally:
            stop_server(b)
    finally:
        stop_server(a)


def slow_url(server: Server) -> str:
    return f"{server.base_url}/inference/v0/stream/{server.org}/slow?delta=false"


def run_url(server: Server) -> str:
    return f"{server.base_url}/run_deployed_flow?flow_id=echo&org={server.org}"


def open_slow(server: Server, key: str) -> Stream:
    stream = Stream(slow_url(server), key)
    assert stream.status == 200, stream.response.read()
    return stream.read_until(lambda s: bool(s.frames()))


def slot(server: Server, key: str) -> Stream | None:
    """A slow run holding a slot, or None if refused one."""
    stream = Stream(slow_url(server), key)
    if stream.status == 200:
        return stream
    stream.close()
    return None


class Follower(threading.Thread):
    """Reads a stream to its end in the background, noting when it ended."""

    def __init__(self, stream: Stream) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.ended_at = 0.0

    def run(self) -> None:
        self.stream.read_to_end()
        self.ended_at = time.monotonic()


def test_a_stop_received_by_one_process_cancels_the_run_on_the_other(
    pair: tuple[Server, Server],
):
    a, b = pair
    stream = open_slow(a, a.public_key)
    run_id = stream.frames()[0]["run_id"]
    follower = Follower(stream)
    follower.start()
    try:
        # Not the key that started it (another public key of the org): the same 404.
        other = add_key(a.database_url, a.org, PUBLIC)
        assert stop(b, "slow", run_id, other).status_code == 404
        assert stop(b, "echo", run_id, a.public_key).status_code == 404  # another flow
        # (and b has verified the key: what is timed below is the stop, not a key check)
        sent = time.monotonic()
        r = stop(b, "slow", run_id, a.public_key)  # the key that started it, through b
        answered = time.monotonic()
        assert r.status_code == 200 and r.json() == {"run_id": run_id, "stopped": True}
        # The answer came after the record said so: read right away, through either.
        rec = record(b, "slow", run_id)
        assert rec["state"] == "CANCELLED" and rec["error"] == "run stopped"
        assert record(a, "slow", run_id)["state"] == "CANCELLED"
        follower.join(timeout=10)
        last = stream.frames()[-1]
        assert last["state"] == "CANCELLED" and last["error"] == "run stopped"
        assert len(last["outputs"]["out-0"].split()) < 12  # cut short
        print(
            f"\nstop through the other process: its stream ended "
            f"{(follower.ended_at - sent) * 1000:.1f} ms after the request was sent; "
            f"answered after {(answered - sent) * 1000:.1f} ms (once recorded)"
        )
    finally:
        stream.close()
    # Ended: a stop through either is a 404, as for a finished run.
    assert stop(b, "slow", run_id, a.private_key).status_code == 404
    assert stop(a, "slow", run_id, a.private_key).status_code == 404
    unknown = "0" * 32
    assert stop(b, "slow", unknown, a.private_key).status_code == 404


def test_one_rate_limit_for_requests_split_over_both(pair: tuple[Server, Server]):
    a, b = pair
    key = add_key(a.database_url, a.org, PUBLIC, rate_limit=6)
    statuses = []
    for i in range(12):
        server = (a, b)[i % 2]
        if i % 3 == 0:  # a request that starts no run counts too
            r = stop(server, "slow", "0" * 32, key)
        elif i == 4:  # as does a run request refused for its body
            r = httpx.post(run_url(server), headers=server.auth(key), content=b"[", timeout=30)
        else:
            r = httpx.post(run_url(server), headers=server.auth(key), json={"in-0": "hi"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.json() == {
                "detail": "rate limit exceeded: 6 requests per minute for this API key"
            }
            assert 1 <= int(r.headers["retry-after"]) <= 10
    assert statuses[:6] == [404, 200, 200, 404, 422, 200]
    assert statuses[6:] == [429] * 6  # the sixth minute's worth: counted once, not per process


def test_one_concurrency_cap_for_both_and_slots_come_back(pair: tuple[Server, Server]):
    a, b = pair
    third = add_key(a.database_url, a.org, PUBLIC)
    on_a = open_slow(a, a.public_key)
    on_b = open_slow(b, a.public_key)
    try:
        for server in (a, b):  # the key's two slots are taken, one on each
            over = httpx.post(slow_url(server), headers=server.auth(), json={}, timeout=30)
            assert over.status_code == 429 and over.headers["retry-after"] == "1"
            assert over.json()["detail"] == "too many runs in flight for this API key (limit 2)"
        with open_slow(a, a.private_key):  # the third slot of all
            busy = httpx.post(slow_url(b), headers=b.auth(third), json={}, timeout=30)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.json()["detail"] == "server busy: too many runs in flight (limit 3)"
        on_a.close()  # given back on a: b may use it
        wait_until(lambda: slot(b, a.public_key), what="the slot freed on a, taken on b").close()
    finally:
        on_a.close()
        on_b.close()


def test_the_slots_of_a_killed_process_come_back(pair: tuple[Server, Server]):
    a, b = pair
    held = [open_slow(a, a.public_key), open_slow(a, a.public_key)]
    refused = httpx.post(slow_url(b), headers=b.auth(), json={}, timeout=30)
    assert refused.status_code == 429
    a.process.kill()  # no drain, no goodbye: its slots are never given back
    a.process.wait(timeout=10)
    for stream in held:
        stream.close()
    started = time.monotonic()
    taken = wait_until(
        lambda: slot(b, b.public_key),
        timeout=LIVENESS + 4,
        every=0.2,
        what="the dead process's slots expired",
    )
    taken.close()
    print(f"\nslots of the killed process free after {time.monotonic() - started:.1f} s")


def test_a_key_revoked_through_one_process_is_refused_by_the_other_at_once(
    pair: tuple[Server, Server], shared_redis: str, prefix: str
):
    a, b = pair
    key = add_key(a.database_url, a.org, PUBLIC)
    cli_key = add_key(a.database_url, a.org, PRIVATE)
    for server in (a, b):  # both have it in their cache (for a minute)
        for k in (key, cli_key):
            r = httpx.post(run_url(server), headers=server.auth(k), json={"in-0": "hi"})
            assert r.status_code == 200
    key_id = key.split("-")[2]
    revoke = f"{a.base_url}/v1/orgs/{a.org}/keys/{key_id}"
    assert httpx.delete(revoke, headers=a.auth(), timeout=10).status_code == 403  # public
    r = httpx.delete(revoke, headers=a.auth(a.private_key), timeout=10)
    revoked_at = time.monotonic()
    assert r.status_code == 200 and r.json() == {"key_id": key_id, "revoked": True}

    def refused_by_b() -> bool:
        r = httpx.post(run_url(b), headers=b.auth(key), json={"in-0": "hi"}, timeout=10)
        return r.status_code == 401

    wait_until(refused_by_b, timeout=1.0, every=0.02, what="b refuses the revoked key")
    print(f"\nrevoked key refused by the other process {time.monotonic() - revoked_at:.3f} s later")
    r = httpx.post(run_url(a), headers=a.auth(key), json={"in-0": "hi"}, timeout=10)
    assert r.status_code == 401 and r.json() == {"detail": "invalid API key"}
    # again: nothing changes; another org's key, or none: 404
    assert httpx.delete(revoke, headers=a.auth(a.private_key), timeout=10).status_code == 200
    elsewhere = add_key(a.database_url, "other-org", PUBLIC).split("-")[2]
    for key_id in (elsewhere, "nosuchkey000"):
        url = f"{b.base_url}/v1/orgs/{a.org}/keys/{key_id}"
        r = httpx.delete(url, headers=b.auth(b.private_key), timeout=10)
        assert r.status_code == 404 and r.json() == {"detail": f"key {key_id!r} not found"}

    # `flowserve keys revoke` on a Redis deployment tells every server too.
    result = CliRunner().invoke(
        cli_app,
        ["keys", "revoke", cli_key.split("-")[2]],
        env={
            "FLOWSERVE_DATABASE_URL": a.database_url,
            "FLOWSERVE_REDIS_URL": shared_redis,
            "FLOWSERVE_REDIS_PREFIX": prefix,
        },
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    for server in (a, b):
        wait_until(
            lambda server=server: (
                httpx.post(
                    run_url(server), headers=server.auth(cli_key), json={"in-0": "x"}, timeout=10
                ).status_code
                == 401
            ),
            timeout=1.0,
            every=0.02,
            what="the key revoked by the command refused",
        )


def test_a_flow_published_through_one_process_runs_on_the_other_at_once(
    pair: tuple[Server, Server],
):
    a, b = pair
    url = f"{b.base_url}/inference/v0/run/{b.org}/versioned"
    assert a.publish(versioned("first")).status_code == 201
    r = httpx.post(url, headers=b.auth(), json={}, timeout=30)
    assert r.json()["outputs"] == {"out-0": "first"}  # b caches version 1 (for a minute)
    assert a.publish(versioned("second")).status_code == 201
    published_at = time.monotonic()

    def second_on_b() -> bool:
        r = httpx.post(url, headers=b.auth(), json={}, timeout=10)
        return r.json()["outputs"] == {"out-0": "second"}

    wait_until(second_on_b, timeout=1.0, every=0.02, what="b runs version 2")
    print(f"\nnew version run by the other process {time.monotonic() - published_at:.3f} s later")
    run_id = httpx.post(url, headers=b.auth(), json={}, timeout=10).json()["run_id"]
    assert record(b, "versioned", run_id)["flow_version"] == 2
