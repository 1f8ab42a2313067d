"""Run time limits: a flow's ``limits: {timeout, idle_timeout}``, else the server's defaults.
A run over either fails (FAILED, error_type "timeout") with a clear message."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from flowserve.events import NodeDelta, RunFinished
from flowserve.providers.resilience import RetryPolicy
from flowserve.runs.runner import Runner
from tests import sse
from tests.conftest import Server
from tests.helpers import flow, registry
from tests.security import record

WORDS = " ".join(f"w{i}" for i in range(40))


def publish(server: Server, flow_id: str, model: str, limits: str) -> None:
    text = f"""
id: {flow_id}
inputs: {{in-0: {{default: "{WORDS}"}}}}
nodes:
  llm-0: {{type: llm, provider: scripted, model: "{model}", prompt: "{{in-0}}"}}
outputs: {{out-0: llm-0}}
limits: {limits}
"""
    r = server.publish(text)
    assert r.status_code in (200, 201), r.text


def stream_v0(server: Server, flow_id: str) -> tuple[list[dict], float]:
    started = time.monotonic()
    r = httpx.post(
        f"{server.base_url}/inference/v0/stream/{server.org}/{flow_id}",
        content=b"{}",
        headers=server.auth(),
        timeout=30,
    )
    assert r.status_code == 200
    return [json.loads(line) for line in r.text.splitlines()], time.monotonic() - started


@pytest.mark.slow
def test_total_time_limit_fails_the_run(server: Server):
    publish(server, "capped", "echo?delay=0.1", "{timeout: 1}")  # 40 words: 4 s
    frames, elapsed = stream_v0(server, "capped")
    last = frames[-1]
    assert last["state"] == "FAILED"
    assert last["error"] == "run exceeded its time limit of 1s"
    assert last["metadata"]["error_type"] == "timeout" and last["metadata"]["node_id"] is None
    assert 0.9 < elapsed < 2.0
    sent = "".join(f["outputs"]["out-0"] for f in frames)
    assert 0 < len(sent.split()) < 40
    rec = record(server, "capped", last["run_id"])
    assert rec["state"] == "FAILED" and rec["error_type"] == "timeout"
    assert rec["error"] == "run exceeded its time limit of 1s"
    assert rec["outputs"]["out-0"] == sent  # the partial output is kept


@pytest.mark.slow
def test_idle_time_limit_fails_the_run(server: Server):
    publish(server, "stalls", "echo?first_delay=5&delay=0", "{idle_timeout: 0.5}")
    frames, elapsed = stream_v0(server, "stalls")
    last = frames[-1]
    assert last["state"] == "FAILED" and last["error"] == "no output for 0.5s"
    assert last["metadata"]["error_type"] == "timeout"
    assert 0.4 < elapsed < 1.5
    # The legacy stream says it in its error message.
    r = httpx.post(
        f"{server.base_url}/stream_exported_flow?flow_id=stalls&org={server.org}",
        content=b"{}",
        headers=server.auth(),
        timeout=30,
    )
    last = list(sse.parse(r.text))[-1].json()
    assert last["error"] == "no output for 0.5s" and last["error_type"] == "timeout"


@pytest.mark.slow
def test_steady_output_never_trips_the_idle_limit(server: Server):
    # 40 words, one every 0.05 s: 2 s in all, four times the idle limit, never idle.
    publish(server, "steady", "echo?delay=0.05", "{idle_timeout: 0.5, timeout: 10}")
    frames, _ = stream_v0(server, "steady")
    assert frames[-1]["state"] == "COMPLETED"
    assert "".join(f["outputs"]["out-0"] for f in frames) == WORDS


@pytest.mark.slow
def test_bad_limits_are_refused_at_publish(server: Server):
    r = server.publish(
        "id: bad-limits\nnodes: {t: {type: template, template: x}}\n"
        "outputs: {out-0: t}\nlimits: {timeout: -1, idle: 3}\n"
    )
    assert r.status_code == 422
    locs = {tuple(p["loc"]) for p in r.json()["detail"]}
    assert ("limits", "timeout") in locs and ("limits", "idle") in locs


@pytest.mark.anyio
async def test_server_defaults_apply_and_a_flow_overrides_them():
    runner = Runner(registry(), RetryPolicy(max_retries=0), timeout=0.3, idle_timeout=5)

    async def final_of(f) -> tuple[RunFinished, int]:
        tokens = 0
        async with runner.start(f, {}) as events:
            async for event in events:
                tokens += isinstance(event, NodeDelta)
                if isinstance(event, RunFinished):
                    return event, tokens
        raise AssertionError("no RunFinished")

    text = """
        id: f
        nodes: {{llm-0: {{type: llm, provider: scripted, model: "echo?delay=0.05&text={text}",
                          prompt: x}}}}
        outputs: {{out-0: llm-0}}
        {limits}
    """
    words = "+".join(["w"] * 20)  # 1 s of output
    plain = flow(text.format(text=words, limits=""))
    final, tokens = await final_of(plain)
    assert final.state == "FAILED" and final.error == "run exceeded its time limit of 0.3s"
    assert 0 < tokens < 20
    longer = flow(text.format(text=words, limits="limits: {timeout: 5}"))
    final, tokens = await final_of(longer)
    assert final.state == "COMPLETED" and tokens == 20
    stalls = flow(
        text.format(text=words, limits="limits: {timeout: 5, idle_timeout: 0.2}").replace(
            "delay=0.05", "delay=0.05&first_delay=2"
        )
    )
    started = time.monotonic()
    final, tokens = await final_of(stalls)
    assert final.error == "no output for 0.2s" and final.error_type == "timeout"
    assert tokens == 0 and time.monotonic() - started < 1
