"""Cloud providers inside flows, through a real server process and the wire-faithful fakes."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests import sse
from tests.conftest import start_server, stop_server
from tests.fakes import AnthropicFake, OpenAIFake, ReplicateFake, Scenario, serve
from tests.fakes.anthropic_wire import DEFAULT_KEY as ANTHROPIC_KEY
from tests.fakes.openai_wire import DEFAULT_KEY as OPENAI_KEY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fakes():
    with (
        serve(OpenAIFake()) as openai,
        serve(AnthropicFake()) as anthropic,
        serve(ReplicateFake()) as replicate,
    ):
        yield openai, anthropic, replicate


@pytest.fixture(scope="module")
def cloud_server(tmp_path_factory, fakes):
    env = {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}
    server = start_server(tmp_path_factory.mktemp("cloud"), env=env)
    try:
        yield server
    finally:
        stop_server(server)


def two_provider_flow(openai: OpenAIFake, anthropic: AnthropicFake) -> str:
    return f"""
id: two-providers
inputs: {{in-0: {{}}}}
nodes:
  gpt:
    type: llm
    provider: openai
    model: gpt-4o-mini
    base_url: "{openai.v1}"
    prompt: "{{in-0}}"
    max_tokens: 50
  claude:
    type: llm
    provider: anthropic
    model: claude-haiku-4-5
    base_url: "{anthropic.base_url}"
    system: "Be brief."
    prompt: "{{in-0}}"
    temperature: 0.2
outputs:
  out-0: gpt
  out-1: claude
"""


def test_two_providers_in_parallel_branches_stream_interleaved(cloud_server, fakes):
    openai, anthropic, _ = fakes
    openai.reset()
    anthropic.reset()
    tokens = [f"t{i} " for i in range(8)]
    openai.script(Scenario(tokens=tokens, gap=0.05))
    anthropic.script(Scenario(tokens=[t.upper() for t in tokens], gap=0.05))
    published = cloud_server.publish(two_provider_flow(openai, anthropic))
    assert published.status_code == 201 and published.json()["warnings"] == []

    url = f"{cloud_server.base_url}/stream_exported_flow?flow_id=two-providers&org={cloud_server.org}&delta=true"
    r = httpx.post(url, headers=cloud_server.auth(), json={"in-0": "hi"}, timeout=30)
    frames = [m.json() for m in sse.parse(r.text)]
    order = [k for f in frames for k, v in f.items() if v]
    assert "".join(f["out-0"] for f in frames) == "".join(tokens)
    assert "".join(f["out-1"] for f in frames) == "".join(t.upper() for t in tokens)
    # Interleaved: each output gets text before the other has finished.
    assert order.index("out-1") < len(order) - 1 - order[::-1].index("out-0")
    assert order.index("out-0") < len(order) - 1 - order[::-1].index("out-1")
    # Each SDK reached its fake with its own auth.
    [gpt_request] = openai.requests_to("/v1/chat/completions")
    assert gpt_request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert gpt_request.body["stream_options"] == {"include_usage": True}
    [claude_request] = anthropic.requests_to("/v1/messages")
    assert claude_request.headers["x-api-key"] == ANTHROPIC_KEY
    assert claude_request.body["system"] == "Be brief."


def test_usage_of_each_node_is_in_the_run_record(cloud_server, fakes):
    openai, anthropic, _ = fakes
    openai.reset()
    anthropic.reset()
    openai.script(Scenario(tokens=["a", "b", "c"], prompt_tokens=11))
    anthropic.script(Scenario(tokens=["x", "y"], prompt_tokens=13))
    cloud_server.publish(two_provider_flow(openai, anthropic))
    r = httpx.post(
        f"{cloud_server.base_url}/inference/v0/run/{cloud_server.org}/two-providers",
        headers=cloud_server.auth(),
        json={"in-0": "hi"},
        timeout=30,
    )
    body = r.json()
    assert body["state"] == "COMPLETED" and body["outputs"] == {"out-0": "abc", "out-1": "xy"}
    meta = httpx.get(
        f"{cloud_server.base_url}/inference/v0/run/{cloud_server.org}/two-providers/metadata",
        params={"run_id": body["run_id"]},
        headers=cloud_server.auth(cloud_server.private_key),
    ).json()
    assert meta["usage"]["gpt"]["prompt_tokens"] == 11
    assert meta["usage"]["gpt"]["completion_tokens"] == 3
    assert meta["usage"]["claude"]["prompt_tokens"] == 13
    assert meta["usage"]["claude"]["completion_tokens"] is not None


def test_missing_key_warns_at_publish_and_fails_the_run_before_any_call(cloud_server, fakes):
    _, _, replicate = fakes
    replicate.reset()
    published = cloud_server.publish(f"""
id: needs-replicate
inputs: {{in-0: {{}}}}
nodes:
  llm-0: {{type: llm, provider: replicate, model: meta/llama, base_url: "{replicate.base_url}",
          prompt: "{{in-0}}"}}
outputs: {{out-0: llm-0}}
""")
    assert published.status_code == 201
    [warning] = published.json()["warnings"]
    assert "REPLICATE_API_TOKEN" in warning and "llm-0" in warning
    r = httpx.post(
        f"{cloud_server.base_url}/inference/v0/stream/{cloud_server.org}/needs-replicate",
        headers=cloud_server.auth(),
        json={"in-0": "hi"},
        timeout=30,
    )
    last = json.loads(r.text.splitlines()[-1])
    assert last["state"] == "FAILED"
    assert "REPLICATE_API_TOKEN" in last["error"] and "llm-0" in last["error"]
    assert replicate.requests == []


def test_upstream_errors_reach_the_client_clean(cloud_server, fakes):
    openai, anthropic, _ = fakes
    openai.reset()
    anthropic.reset()
    cloud_server.publish(two_provider_flow(openai, anthropic))
    leaked = {
        "error": {
            "message": f"Incorrect API key provided: {OPENAI_KEY}.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    openai.script(Scenario(status=401, body=leaked))
    anthropic.script(Scenario(tokens=["slow"] * 50, gap=0.1))
    url = (
        f"{cloud_server.base_url}/stream_exported_flow?flow_id=two-providers&org={cloud_server.org}"
    )
    r = httpx.post(url, headers=cloud_server.auth(), json={"in-0": "hi"}, timeout=30)
    last = list(sse.parse(r.text))[-1].json()
    assert last["node_id"] == "gpt" and last["error_type"] == "provider_auth_error"
    assert "Incorrect API key" in last["error"]
    assert OPENAI_KEY not in r.text  # the upstream echoed the key; we never do
    assert "Traceback" not in r.text
    # The failure cancelled the other branch: the anthropic fake saw its client leave.
    deadline = time.monotonic() + 5
    while not anthropic.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert anthropic.disconnects
