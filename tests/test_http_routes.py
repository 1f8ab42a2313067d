"""The HTTP contract (Part 2) against a real server process, with the scripted provider."""

from __future__ import annotations

import json

import httpx
import pytest

from tests import sse
from tests.conftest import Server

pytestmark = pytest.mark.slow


def post(server: Server, path: str, body: object, key: str | None = None, **headers: str):
    return httpx.post(
        f"{server.base_url}{path}",
        content=json.dumps(body),
        headers={**server.auth(key), "Content-Type": "application/json", **headers},
        timeout=30,
    )


def test_legacy_stream_sends_cumulative_outputs(server: Server):
    r = post(server, f"/stream_exported_flow?flow_id=echo&org={server.org}", {"in-0": "a b c d"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in r.headers
    messages = list(sse.parse(r.text))
    outputs = [m.json() for m in messages]
    assert outputs[0] == {"out-0": ""}  # sent as soon as the run starts
    texts = [o["out-0"] for o in outputs]
    # Cumulative: each message extends the previous one; the last is the whole answer.
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))
    assert texts[-1] == "a b c d"
    assert len(messages) >= 3
    run_ids = {m.id.split(":")[0] for m in messages}
    seqs = [int(m.id.split(":")[1]) for m in messages]
    assert len(run_ids) == 1 and seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert "[DONE]" not in r.text


def test_legacy_stream_delta_mode_sends_only_new_text(server: Server):
    r = post(
        server,
        f"/stream_exported_flow?flow_id=echo&org={server.org}&delta=true",
        {"in-0": "a b c d"},
    )
    outputs = [m.json()["out-0"] for m in sse.parse(r.text)]
    assert "".join(outputs) == "a b c d"
    assert max(len(o) for o in outputs) <= 2  # one word (plus its space) at a time


def test_every_output_appears_in_every_cumulative_message(server: Server):
    r = post(server, f"/stream_exported_flow?flow_id=chain&org={server.org}", {"in-0": "x y"})
    outputs = [m.json() for m in sse.parse(r.text)]
    assert all(set(o) == {"out-0", "out-1", "out-2", "out-3"} for o in outputs)
    assert outputs[-1] == {
        "out-0": "A x y",
        "out-1": "B friendly",
        "out-2": "C A x y",
        "out-3": "[A x y] [B friendly] {literal}",
    }


def test_v0_stream_json_lines_envelope(server: Server):
    r = post(server, f"/inference/v0/stream/{server.org}/echo", {"in-0": "a b c"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    frames = [json.loads(line) for line in r.text.splitlines() if line]
    for frame in frames:
        assert set(frame) == {
            "outputs",
            "run_id",
            "state",
            "error",
            "metadata",
            "progress_data",
            "citations",
            "pause",
        }
    assert "".join(f["outputs"]["out-0"] for f in frames) == "a b c"  # delta by default
    assert [f["state"] for f in frames[:-1]] == ["RUNNING"] * (len(frames) - 1)
    last = frames[-1]
    assert last["state"] == "COMPLETED" and last["error"] is None
    assert last["metadata"]["usage"]["llm-0"] == {"prompt_tokens": 3, "completion_tokens": 3}
    assert last["progress_data"]["completed_nodes"] == ["llm-0"]
    assert last["progress_data"]["total_nodes"] == 1


def test_v0_stream_sse_cumulative(server: Server):
    r = post(
        server, f"/inference/v0/stream/{server.org}/echo?sse=true&delta=false", {"in-0": "a b c"}
    )
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    frames = [m.json() for m in sse.parse(r.text)]
    assert frames[-1]["state"] == "COMPLETED"
    assert frames[-1]["outputs"]["out-0"] == "a b c"
    assert frames[-2]["outputs"]["out-0"] == "a b c"  # cumulative


def test_blocking_routes(server: Server):
    r = post(server, f"/run_deployed_flow?flow_id=echo&org={server.org}", {"in-0": "hi there"})
    assert r.status_code == 200 and r.json() == {"out-0": "hi there"}
    r = post(server, f"/inference/v0/run/{server.org}/echo", {"in-0": "hi there"})
    body = r.json()
    assert body["outputs"] == {"out-0": "hi there"} and body["state"] == "COMPLETED"
    assert body["run_id"] and body["error"] is None


def test_failure_mid_stream_legacy_and_v0(server: Server):
    r = post(server, f"/stream_exported_flow?flow_id=failing&org={server.org}", {})
    last = list(sse.parse(r.text))[-1].json()
    assert last["node_id"] == "llm-0" and "scripted failure" in last["error"]
    assert last["error_type"] == "provider_upstream_error" and last["run_id"]
    assert "Traceback" not in r.text
    r = post(server, f"/inference/v0/stream/{server.org}/failing", {})
    last = json.loads(r.text.splitlines()[-1])
    assert last["state"] == "FAILED" and "llm-0" in last["error"]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [
        ("/stream_exported_flow?flow_id=echo&org={org}", {"in-0": "x"}, {"Authorization": ""}, 401),
        (
            "/stream_exported_flow?flow_id=echo&org={org}",
            {"in-0": "x"},
            {"Authorization": "Basic abc"},
            401,
        ),
        (
            "/stream_exported_flow?flow_id=echo&org={org}",
            {"in-0": "x"},
            {
                "Authorization": "Bearer fs-pub-aaaaaaaaaaaa-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
            },
            401,
        ),
        ("/stream_exported_flow?flow_id=echo&org=other-org", {"in-0": "x"}, {}, 401),
        ("/stream_exported_flow?flow_id=nope&org={org}", {"in-0": "x"}, {}, 404),
        ("/stream_exported_flow?flow_id=echo&org={org}&version=99", {"in-0": "x"}, {}, 404),
        ("/stream_exported_flow?flow_id=echo&org={org}", ["not", "an object"], {}, 422),
        ("/stream_exported_flow?flow_id=echo&org={org}", {"in-9": "x"}, {}, 422),
        ("/stream_exported_flow?flow_id=echo&org={org}", {}, {}, 422),
        ("/stream_exported_flow?flow_id=echo&org={org}", {"in-0": 5}, {}, 422),
        ("/inference/v0/stream/{org}/echo", {"in-0": "x", "user_id": ["x"]}, {}, 422),
    ],
)
def test_errors_before_the_first_byte(server: Server, path, body, headers, status):
    url = server.base_url + path.format(org=server.org)
    h = {**server.auth(), "Content-Type": "application/json", **headers}
    r = httpx.post(url, content=json.dumps(body), headers=h, timeout=30)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    if status == 422:
        assert isinstance(detail, list) and {"loc", "msg", "type"} <= set(detail[0])
    else:
        assert isinstance(detail, str)
    # The same error, for an SSE client: same status, framed as one SSE message.
    r = httpx.post(
        url, content=json.dumps(body), timeout=30, headers={**h, "Accept": "text/event-stream"}
    )
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/event-stream")
    [message] = list(sse.parse(r.text))
    assert message.json()["status"] == status and message.json()["error"]


def test_unknown_org_and_wrong_org_look_the_same(server: Server):
    a = post(server, "/stream_exported_flow?flow_id=echo&org=does-not-exist", {"in-0": "x"})
    assert a.status_code == 401 and a.json() == {"detail": "invalid API key"}


def test_body_too_large_is_413(server: Server):
    r = post(
        server, f"/stream_exported_flow?flow_id=echo&org={server.org}", {"in-0": "x" * 2_000_000}
    )
    assert r.status_code == 413


def test_run_record(server: Server):
    r = post(server, f"/inference/v0/run/{server.org}/echo", {"in-0": "one two", "user_id": "u-1"})
    run_id = r.json()["run_id"]
    url = f"{server.base_url}/inference/v0/run/{server.org}/echo/metadata?run_id={run_id}"
    record = httpx.get(url, headers=server.auth(server.private_key)).json()
    assert record["state"] == "COMPLETED"
    assert record["inputs"] == {"in-0": "one two"} and record["outputs"] == {"out-0": "one two"}
    assert record["user_id"] == "u-1" and record["flow_version"] == 1
    assert record["usage"] == {"llm-0": {"prompt_tokens": 2, "completion_tokens": 2}}
    t = record["timings"]
    assert 0 <= t["queued_ms"] <= t["first_token_ms"] <= t["total_ms"]
    # A public key may not read run records; a wrong run id is a 404.
    assert httpx.get(url, headers=server.auth()).status_code == 403
    missing = url.replace(run_id, "0" * 32)
    assert httpx.get(missing, headers=server.auth(server.private_key)).status_code == 404


def test_publishing_makes_versions_and_runs_pick_latest_or_asked(server: Server):
    text = """
id: versioned
inputs: {in-0: {}}
nodes: {t: {type: template, template: "v1 {in-0}"}}
outputs: {out-0: t}
"""
    first = server.publish(text)
    assert first.status_code == 201 and first.json()["version"] == 1
    assert server.publish(text).json() == {
        "flow_id": "versioned",
        "version": 1,
        "created": False,
        "warnings": [],
    }
    second = server.publish(text.replace("v1", "v2"))
    assert second.json()["version"] == 2
    run = f"/run_deployed_flow?flow_id=versioned&org={server.org}"
    assert post(server, run, {"in-0": "x"}).json() == {"out-0": "v2 x"}
    assert post(server, run + "&version=1", {"in-0": "x"}).json() == {"out-0": "v1 x"}
    # Publishing needs a private key, and a broken flow is refused with every problem listed.
    assert server.publish(text, key=server.public_key).status_code == 403
    bad = server.publish(text.replace("{in-0}", "{nope}"))
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["nodes", "t", "template"]
    assert post(server, run, {"in-0": "x"}).json() == {"out-0": "v2 x"}  # nothing lost


def test_memory_follows_user_id(server: Server):
    server.publish("""
id: memo
inputs: {in-0: {}}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?history=1", prompt: "{in-0}",
          memory: {window: 5}}
outputs: {out-0: llm-0}
""")
    run = f"/run_deployed_flow?flow_id=memo&org={server.org}"
    assert post(server, run, {"in-0": "apple", "user_id": "ann"}).json()["out-0"] == "apple"
    second = post(server, run, {"in-0": "banana", "user_id": "ann"}).json()["out-0"]
    # The LLM saw the earlier exchange: user "apple", assistant "apple", then "banana".
    assert second == "apple | apple | banana"
    other = post(server, run, {"in-0": "cherry", "user_id": "bob"}).json()["out-0"]
    assert other == "cherry"
    anonymous = post(server, run, {"in-0": "date"}).json()["out-0"]
    assert anonymous == "date"


def test_openapi_docs(server: Server):
    assert httpx.get(f"{server.base_url}/docs").status_code == 200
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    assert "/stream_exported_flow" in schema["paths"]
    assert "/inference/v0/stream/{org}/{flow_id}" in schema["paths"]
