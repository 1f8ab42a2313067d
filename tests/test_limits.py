"""Rate limits per key and caps on runs in flight, against a real server: refused before the
first byte with 429/503 and Retry-After, framed for SSE clients, and run slots given back
however a run ends."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from flowserve.auth import PRIVATE, PUBLIC
from flowserve.cli import app as cli_app
from tests import sse
from tests.conftest import Server, start_server, stop_server
from tests.security import Stream, add_key, stop

pytestmark = pytest.mark.slow

SLOW = """
id: slow
inputs: {in-0: {default: "one two three four five six seven eight nine ten"}}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.5", prompt: "{in-0}"}
outputs: {out-0: llm-0}
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "FLOWSERVE_MAX_CONCURRENT_RUNS_PER_KEY": "2",
        "FLOWSERVE_MAX_CONCURRENT_RUNS": "3",
        # A client that leaves ends its run, and so frees its slot, at once; with a resume
        # grace the run (still spending) keeps it until the grace is over.
        "FLOWSERVE_RESUME_GRACE": "0",
    }
    srv = start_server(tmp_path_factory.mktemp("limited"), env=env)
    try:
        for name in ("echo.yaml", "failing.yaml"):
            srv.publish_file(name)
        assert srv.publish(SLOW).status_code == 201
        yield srv
    finally:
        stop_server(srv)


def run_count(server: Server) -> int:
    with sqlite3.connect(server.database_url.split("///", 1)[1]) as db:
        return int(db.execute("SELECT count(*) FROM runs").fetchone()[0])


def slow_url(server: Server) -> str:
    return f"{server.base_url}/stream_exported_flow?flow_id=slow&org={server.org}"


def post(server: Server, url: str, key: str, **headers: str) -> httpx.Response:
    return httpx.post(
        url, content=b"{}", headers={"Authorization": f"Bearer {key}", **headers}, timeout=30
    )


def open_stream(server: Server, key: str, timeout: float = 5) -> Stream:
    """A slow run holding a slot, retried while the server still counts a slot just freed."""
    deadline = time.monotonic() + timeout
    while True:
        s = Stream(slow_url(server), key)
        if s.status == 200:
            return s.read_until(lambda s: bool(s.messages()))
        s.close()
        assert time.monotonic() < deadline, f"no slot for {key[:20]}: {s.status}"
        time.sleep(0.1)


def test_cli_rate_limit_then_429_with_retry_after(limited: Server):
    result = CliRunner().invoke(
        cli_app,
        ["keys", "create", "--org", limited.org, "--rate-limit", "3"],
        env={"FLOWSERVE_DATABASE_URL": limited.database_url},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    key = result.output.strip()
    assert key.startswith("fs-pub-")
    url = f"{limited.base_url}/run_deployed_flow?flow_id=echo&org={limited.org}"
    body = json.dumps({"in-0": "hi"})
    runs_before = run_count(limited)
    for _ in range(3):
        r = httpx.post(url, content=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200
    r = httpx.post(url, content=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 20
    assert r.json() == {"detail": "rate limit exceeded: 3 requests per minute for this API key"}
    # For an SSE client: the same status, one SSE message, and a retry: field in ms.
    r = httpx.post(
        url,
        content=body,
        headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"},
        timeout=30,
    )
    assert r.status_code == 429 and r.headers["content-type"].startswith("text/event-stream")
    [message] = list(sse.parse(r.text))
    assert message.retry == int(r.headers["retry-after"]) * 1000
    assert message.json()["status"] == 429 and "rate limit" in message.json()["error"]
    assert run_count(limited) == runs_before + 3  # refused requests never ran
    # Other keys have their own buckets (the server default, 600 a minute).
    assert post(limited, url, limited.public_key).status_code == 422  # in-0 required: admitted


def test_rate_limit_bucket_refills(limited: Server):
    key = add_key(limited.database_url, limited.org, PUBLIC, rate_limit=60)  # one a second
    unknown = f"{limited.base_url}/inference/v0/stop/{limited.org}/echo?run_id={'0' * 32}"
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        statuses = [client.post(unknown).status_code for _ in range(60)]
        assert statuses == [404] * 60  # a minute's worth at once (the burst) ...
        for _ in range(5):  # ... then no more (a token may have come back meanwhile)
            r = client.post(unknown)
            if r.status_code == 429:
                break
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        time.sleep(1.1)
        assert client.post(unknown).status_code == 404  # a token came back


def test_concurrency_caps_per_key_and_server(limited: Server):
    third = add_key(limited.database_url, limited.org, PUBLIC)
    a1 = open_stream(limited, limited.public_key)
    a2 = open_stream(limited, limited.public_key)
    try:
        over = post(limited, slow_url(limited), limited.public_key)
        assert over.status_code == 429 and over.headers["retry-after"] == "1"
        assert over.json()["detail"] == "too many runs in flight for this API key (limit 2)"
        b1 = open_stream(limited, limited.private_key)  # another key: the third server slot
        try:
            busy = post(limited, slow_url(limited), third, Accept="text/event-stream")
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            [message] = list(sse.parse(busy.text))
            assert message.retry == 1000
            assert message.json()["error"] == "server busy: too many runs in flight (limit 3)"
        finally:
            b1.close()
        # A client that leaves gives its slot back ...
        a1.close()
        a1 = open_stream(limited, limited.public_key)
        # ... and so does a stopped run.
        run_id = a2.messages()[0].id.split(":")[0]
        assert stop(limited, "slow", run_id, limited.public_key).status_code == 200
        a2.read_to_end()
        a2.close()
        a2 = open_stream(limited, limited.public_key)
    finally:
        a1.close()
        a2.close()


def test_failed_refused_and_finished_runs_give_their_slot_back(limited: Server):
    key = add_key(limited.database_url, limited.org, PRIVATE)
    base = limited.base_url
    org = limited.org
    for _ in range(3):  # more than the cap of 2, one after the other
        r = post(limited, f"{base}/stream_exported_flow?flow_id=failing&org={org}", key)
        assert r.status_code == 200 and "scripted failure" in r.text
        r = post(limited, f"{base}/run_deployed_flow?flow_id=failing&org={org}", key)
        assert r.status_code == 502
        r = post(limited, f"{base}/inference/v0/run/{org}/echo", key, Accept="application/json")
        assert r.status_code == 422  # refused after admission: never held a slot
        r = httpx.post(
            f"{base}/inference/v0/run/{org}/echo",
            json={"in-0": "x"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["state"] == "COMPLETED"
    # All slots are free again: the key can hold its two.
    with open_stream(limited, key), open_stream(limited, key):
        assert post(limited, slow_url(limited), key).status_code == 429


def test_runs_limited_by_time_give_their_slot_back(limited: Server):
    key = add_key(limited.database_url, limited.org, PUBLIC)
    capped = SLOW.replace("id: slow", "id: slow-capped") + "limits: {timeout: 0.3}\n"
    assert limited.publish(capped).status_code == 201
    url = f"{limited.base_url}/inference/v0/stream/{limited.org}/slow-capped"
    for _ in range(3):
        r = post(limited, url, key)
        assert r.status_code == 200
        assert json.loads(r.text.splitlines()[-1])["state"] == "FAILED"
    with open_stream(limited, key), open_stream(limited, key):
        pass
