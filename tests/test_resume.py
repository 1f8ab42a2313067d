"""Resuming a stream in one process (contract 2.5): a client that lost its connection sends
``last-event-id: <run_id>:<n>`` and gets what came after, once, from the same run; a run whose
client left is kept ``resume_grace`` for it, then cancelled.

Runs use the scripted provider with a delay per token, so a stream can be cut in the middle;
each run's words are numbered, so a token seen twice or missed shows."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flowserve.auth import PUBLIC
from flowserve.config import Settings
from flowserve.services import Services
from tests import sse
from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow

WORDS = " ".join(f"w{i}" for i in range(40))
COUNTED = f"""
id: counted
inputs:
  in-0: {{default: "{WORDS}"}}
nodes:
  llm-0: {{type: llm, provider: scripted, model: "echo?delay=0.03", prompt: "{{in-0}}"}}
  tpl-0: {{type: template, template: "done: {{llm-0}}"}}
outputs:
  out-0: llm-0
  out-1: tpl-0
"""
GRACE = 1.0
SLOW = COUNTED.replace("id: counted", "id: slow").replace("delay=0.03", "delay=0.1")  # 4 s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("resume"),
        env={"FLOWSERVE_RESUME_GRACE": str(GRACE), "FLOWSERVE_RECORD_DELAY": "0.05"},
    )
    try:
        assert srv.publish(COUNTED).status_code == 201
        assert srv.publish(SLOW).status_code == 201
        yield srv
    finally:
        stop_server(srv)


def v0_url(server: Server, flow: str = "counted") -> str:
    return f"{server.base_url}/inference/v0/stream/{server.org}/{flow}?sse=true"


def legacy_url(server: Server) -> str:
    return f"{server.base_url}/stream_exported_flow?flow_id=counted&org={server.org}"


def read_messages(response: httpx.Response, stop_after: int | None = None) -> list[sse.Message]:
    """The SSE messages of a response; with ``stop_after``, only that many (then the caller
    drops the connection)."""
    buffer = ""
    messages: list[sse.Message] = []
    for chunk in response.iter_text():
        buffer += chunk
        *complete, buffer = buffer.split("\n\n")
        for block in complete:
            messages.extend(sse.parse(block + "\n\n"))
            if stop_after is not None and len(messages) >= stop_after:
                return messages
    return messages


def cut_stream(url: str, server: Server, count: int, body: Any = None) -> list[sse.Message]:
    """Read ``count`` messages of a new stream, then drop the connection."""
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", url, headers=server.auth(), json=body or {}) as response,
    ):
        assert response.status_code == 200
        return read_messages(response, stop_after=count)


def resume(
    url: str, server: Server, last_id: str, key: str | None = None, body: Any = None
) -> httpx.Response:
    headers = {**server.auth(key), "last-event-id": last_id}
    return httpx.post(url, headers=headers, json=body or {}, timeout=30)


def wait_final(
    server: Server, run_id: str, timeout: float = 15, flow: str = "counted"
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(
            f"{server.base_url}/inference/v0/run/{server.org}/{flow}/metadata",
            params={"run_id": run_id},
            headers=server.auth(server.private_key),
        )
        if response.status_code == 200 and response.json()["state"] != "RUNNING":
            return response.json()
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")


def runs_of_flow(server: Server) -> int:
    response = httpx.get(
        f"{server.base_url}/v1/orgs/{server.org}/runs",
        params={"flow_id": "counted", "limit": 500},
        headers=server.auth(server.private_key),
    )
    assert response.status_code == 200, response.text
    return len(response.json()["runs"])


def deltas(messages: list[sse.Message]) -> str:
    return "".join(m.json()["outputs"]["out-0"] for m in messages)


def test_a_v0_delta_stream_resumes_with_exactly_the_missing_deltas(server):
    before = runs_of_flow(server)
    first = cut_stream(v0_url(server), server, count=6)
    last_id = first[-1].id
    assert last_id is not None
    run_id = last_id.split(":")[0]
    # the re-POSTed body would be a new run; it is not read
    resumed = resume(v0_url(server), server, last_id, body={"in-0": "something else"})
    assert resumed.status_code == 200, resumed.text
    rest = list(sse.parse(resumed.text))
    assert {m.json()["run_id"] for m in first + rest} == {run_id}
    assert rest[-1].json()["state"] == "COMPLETED"
    # every word once, in order: the deltas before the cut and after it are the whole text
    assert deltas(first) + deltas(rest) == WORDS
    ids = [int(m.id.split(":")[1]) for m in first + rest if m.id]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert wait_final(server, run_id)["outputs"]["out-0"] == WORDS
    assert runs_of_flow(server) == before + 1  # one run, one provider call


def test_the_legacy_stream_resumes_with_the_whole_snapshot_first(server):
    first = cut_stream(legacy_url(server), server, count=5)
    seen = first[-1].json()["out-0"]
    assert seen and seen != WORDS
    resumed = resume(legacy_url(server), server, first[-1].id)
    assert resumed.status_code == 200
    rest = list(sse.parse(resumed.text))
    snapshot = rest[0].json()["out-0"]
    assert snapshot.startswith(seen) and len(snapshot) >= len(seen)
    assert rest[-1].json() == {"out-0": WORDS, "out-1": f"done: {WORDS}"}
    for earlier, later in itertools.pairwise(rest):  # cumulative all along
        assert later.json()["out-0"].startswith(earlier.json()["out-0"])


def test_a_client_that_comes_back_within_the_grace_keeps_its_run(server):
    first = cut_stream(v0_url(server), server, count=3)
    time.sleep(GRACE / 2)
    resumed = resume(v0_url(server), server, first[-1].id)
    assert list(sse.parse(resumed.text))[-1].json()["state"] == "COMPLETED"
    assert wait_final(server, first[-1].id.split(":")[0])["state"] == "COMPLETED"


def test_a_run_whose_client_does_not_come_back_is_cancelled_after_the_grace(server):
    first = cut_stream(v0_url(server, "slow"), server, count=3)
    run_id = first[-1].id.split(":")[0]
    left = time.monotonic()
    final = wait_final(server, run_id, flow="slow")
    waited = time.monotonic() - left
    assert final["state"] == "CANCELLED" and final["error_type"] == "cancelled"
    assert waited >= GRACE * 0.9  # kept for the grace, not cancelled at once
    assert final["outputs"]["out-0"] != WORDS  # cut before its end (40 words x 100 ms)
    # and once cancelled, resuming it replays the rest of what it had, then its end
    resumed = resume(v0_url(server, "slow"), server, first[-1].id)
    rest = list(sse.parse(resumed.text))
    assert rest[-1].json()["state"] == "CANCELLED"
    assert deltas(first) + deltas(rest) == final["outputs"]["out-0"]


def test_a_finished_run_can_still_be_resumed_for_its_end(server):
    first = cut_stream(v0_url(server), server, count=2)
    run_id = first[-1].id.split(":")[0]
    time.sleep(0.2)
    resumed = resume(v0_url(server), server, first[-1].id)  # attach: the run goes on
    assert resumed.status_code == 200
    assert wait_final(server, run_id)["state"] == "COMPLETED"
    again = resume(v0_url(server), server, first[-1].id)  # after its end
    rest = list(sse.parse(again.text))
    assert deltas(first) + deltas(rest) == WORDS
    assert rest[-1].json()["state"] == "COMPLETED"


def test_resume_points_that_name_no_run_of_yours_are_refused(server, tmp_path):
    first = cut_stream(v0_url(server), server, count=2)
    run_id = first[-1].id.split(":")[0]
    unknown = resume(v0_url(server), server, f"{'0' * 32}:3")
    assert unknown.status_code == 404
    message = unknown.json()["detail"]
    assert "cannot be resumed" in str(message)
    # another flow of the org, and another org: the same 404, never its events
    other_flow = resume(
        f"{server.base_url}/inference/v0/stream/{server.org}/nosuch?sse=true", server, first[-1].id
    )
    assert other_flow.status_code == 404
    other = start_server(tmp_path, org="other")
    try:
        assert other.publish(COUNTED).status_code == 201
        elsewhere = httpx.post(
            f"{other.base_url}/inference/v0/stream/other/counted?sse=true",
            headers={**other.auth(), "last-event-id": first[-1].id},
            json={},
        )
        assert elsewhere.status_code == 404
    finally:
        stop_server(other)
    # a malformed id, or one past the run's end, is a 422 naming the header
    for bad in ("nope", f"{run_id}:x", f"{run_id}:99999999", f"{run_id}"):
        refused = resume(v0_url(server), server, bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert "last-event-id" in json.dumps(refused.json())
    # the private key of the org may resume it
    mine = resume(v0_url(server), server, first[-1].id, key=server.private_key)
    assert mine.status_code == 200


def test_another_public_key_of_the_org_cannot_resume_it(server):
    async def new_key() -> str:  # a second public key of the org, as `keys create` makes it
        services = Services.build(Settings(database_url=server.database_url))
        try:
            return (await services.keys.create_key(server.org, PUBLIC)).token
        finally:
            await services.aclose()

    other_key = asyncio.run(new_key())
    first = cut_stream(v0_url(server), server, count=2)
    refused = resume(v0_url(server), server, first[-1].id, key=other_key)
    assert refused.status_code == 404
