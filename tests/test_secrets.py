"""Secrets never leak, and the logs are structured.

A server runs with a provider key in its environment and debug logging, against an upstream
that echoes the key back in its errors (the worst case), and serves successful, failing and
refused requests made with known flowserve keys and a wrong one. Then the server log, every
HTTP response (headers and body) and the bytes of the SQLite files are searched for each
secret: none may appear. The same traffic checks the JSON log lines: each request has one
line carrying its run_id, and lines written about a run carry its run_id.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from flowserve.cli import app as cli_app
from tests.conftest import Server, start_server, stop_server
from tests.security import Stream, stop

pytestmark = pytest.mark.slow

PROVIDER_KEY = "sk-test-SECRETVALUE"


class EchoingUpstream(BaseHTTPRequestHandler):
    """An OpenAI-shaped upstream that puts the caller's key in every error it returns."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        auth = self.headers.get("authorization", "")
        key = auth.removeprefix("Bearer ")
        if body["model"] == "auth-echo":
            self._json(401, {"error": {"message": f"Incorrect API key provided: {key}."}})
        elif body["model"] == "boom-echo":
            self._json(500, {"message": f"internal error for {auth}", "key": key})
        else:  # a stream that fails after one token with the key in the error event
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            chunk = {"choices": [{"index": 0, "delta": {"content": "partial"}}]}
            error = {"error": {"message": f"upstream broke; your key {key} is fine"}}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(error)}\n\n".encode())

    def _json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Traffic:
    server: Server
    secrets: dict[str, str]
    responses: list[str] = field(default_factory=list)
    run_ids: dict[str, str] = field(default_factory=dict)
    log: str = ""
    db_bytes: bytes = b""


def cloud_flow(flow_id: str, model: str, port: int) -> str:
    return f"""
id: {flow_id}
inputs: {{in-0: {{}}}}
nodes:
  llm-0: {{type: llm, provider: openai, model: {model}, base_url: "http://127.0.0.1:{port}/v1",
          prompt: "{{in-0}}"}}
outputs: {{out-0: llm-0}}
"""


SLOW_FLOW = """\
id: long
inputs: {in-0: {default: "x"}}
nodes: {llm-0: {type: llm, provider: scripted, model: "echo?delay=0.05&repeat=400", prompt: "{in-0}"}}
outputs: {out-0: llm-0}
"""


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), EchoingUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = upstream.server_address[1]
    tmp = tmp_path_factory.mktemp("secrets")
    srv = start_server(
        tmp,
        env={
            "OPENAI_API_KEY": PROVIDER_KEY,
            "FLOWSERVE_LOG_JSON": "1",
            "FLOWSERVE_LOG_LEVEL": "debug",
            "FLOWSERVE_MAX_RETRIES": "1",
        },
    )
    key_id = srv.public_key.split("-")[2]
    wrong = f"fs-pub-{key_id}-WRONGSECRETwrongsecret0123"
    t = Traffic(
        srv,
        {
            "provider key": PROVIDER_KEY,
            "provider key body": "SECRETVALUE",
            "public key secret": srv.public_key.split("-", 3)[3],
            "private key secret": srv.private_key.split("-", 3)[3],
            "wrong key secret": wrong.split("-", 3)[3],
        },
    )
    try:
        srv.publish_file("echo.yaml")
        # Long enough to be stopped or left mid-stream, whatever the machine's load (the
        # embedded model at temperature 0.8 sometimes ended its story first).
        r = srv.publish(SLOW_FLOW)
        assert r.status_code == 201, r.text
        for flow_id, model in (("auth", "auth-echo"), ("boom", "boom-echo"), ("mid", "mid")):
            r = srv.publish(cloud_flow(flow_id, model, port))
            assert r.status_code == 201, r.text
            t.responses.append(str(r.headers) + r.text)
        _make_requests(t, wrong)
        result = CliRunner().invoke(
            cli_app,
            ["keys", "list", "--org", srv.org],
            env={"FLOWSERVE_DATABASE_URL": srv.database_url},
        )
        t.responses.append(result.output)
    finally:
        stop_server(srv)
        upstream.shutdown()
        upstream.server_close()
    t.log = srv.log()
    t.db_bytes = b"".join(p.read_bytes() for p in Path(tmp).glob("flowserve.db*"))
    yield t


def _make_requests(t: Traffic, wrong: str) -> None:
    srv = t.server

    def keep(r: httpx.Response) -> httpx.Response:
        t.responses.append(f"{r.status_code} {r.headers}\n{r.text}")
        return r

    def post(path: str, key: str, body: object, **headers: str) -> httpx.Response:
        return keep(
            httpx.post(
                srv.base_url + path,
                content=json.dumps(body),
                headers={"Authorization": f"Bearer {key}", **headers},
                timeout=60,
            )
        )

    org = srv.org
    ok = post(f"/inference/v0/run/{org}/echo", srv.public_key, {"in-0": "hello there"})
    t.run_ids["ok"] = ok.json()["run_id"]
    for flow_id in ("auth", "boom", "mid"):
        r = post(f"/inference/v0/run/{org}/{flow_id}", srv.public_key, {"in-0": "hi"})
        assert r.json()["state"] == "FAILED", r.text
        t.run_ids[flow_id] = r.json()["run_id"]
        post(f"/stream_exported_flow?flow_id={flow_id}&org={org}", srv.public_key, {"in-0": "hi"})
        post(f"/inference/v0/stream/{org}/{flow_id}?sse=true", srv.private_key, {"in-0": "hi"})
        post(f"/run_deployed_flow?flow_id={flow_id}&org={org}", srv.public_key, {"in-0": "hi"})
        meta = (
            f"{srv.base_url}/inference/v0/run/{org}/{flow_id}/metadata?run_id={t.run_ids[flow_id]}"
        )
        keep(httpx.get(meta, headers=srv.auth(srv.private_key)))
    # A query parameter the log must not show, on a request that works.
    r = post(
        f"/stream_exported_flow?flow_id=echo&org={org}&api_key=QUERYSECRET",
        srv.public_key,
        {"in-0": "q"},
    )
    t.run_ids["query"] = r.text.split("id: ", 1)[1].split(":", 1)[0]
    t.secrets["query secret"] = "QUERYSECRET"
    # Refused: a wrong secret for a real key id, a malformed header, a wrong org.
    assert post(f"/inference/v0/run/{org}/echo", wrong, {"in-0": "x"}).status_code == 401
    assert (
        post(
            f"/inference/v0/run/{org}/echo", wrong, {"in-0": "x"}, Accept="text/event-stream"
        ).status_code
        == 401
    )
    assert post("/inference/v0/run/other/echo", srv.private_key, {"in-0": "x"}).status_code == 401
    keep(httpx.get(f"{srv.base_url}/metrics", headers=srv.auth(srv.private_key)))
    keep(httpx.get(f"{srv.base_url}/openapi.json"))
    # A stopped run and a client that leaves: both are logged with their run id.
    url = f"{srv.base_url}/inference/v0/stream/{org}/long"
    with Stream(url, srv.public_key) as s:
        s.read_until(lambda s: len(s.frames()) >= 2)
        t.run_ids["stopped"] = s.frames()[0]["run_id"]
        keep(stop(srv, "long", t.run_ids["stopped"], srv.public_key))
        s.read_to_end()
        t.responses.append(s.text)
    with Stream(url, srv.public_key) as s:
        s.read_until(lambda s: len(s.frames()) >= 2)
        t.run_ids["left"] = s.frames()[0]["run_id"]
    _wait_for_log(srv, t.run_ids["left"], "client disconnected")


def _wait_for_log(srv: Server, run_id: str, text: str) -> None:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(text in line and run_id in line for line in srv.log().splitlines()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no log line {text!r} for {run_id}")


def test_no_secret_in_logs_responses_or_database(traffic: Traffic):
    assert traffic.db_bytes and traffic.log and len(traffic.responses) > 20
    places = {
        "server log": traffic.log,
        "responses": "\n".join(traffic.responses),
        "database files": traffic.db_bytes.decode("latin-1"),
    }
    for name, secret in traffic.secrets.items():
        for place, text in places.items():
            assert secret not in text, f"{name} found in {place}"
    # The failures did happen, and say what went wrong without the key.
    everything = places["responses"]
    assert "Incorrect API key provided: [redacted]" in everything
    assert "upstream broke; your key [redacted] is fine" in everything


def test_json_log_lines_carry_the_run_id(traffic: Traffic):
    lines = [json.loads(line) for line in traffic.log.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg", "run_id"} <= set(entry) for entry in lines)
    requests = [e for e in lines if e["logger"] == "flowserve.access"]
    by_run: dict[str, list[dict]] = {}
    for e in requests:
        by_run.setdefault(e["run_id"], []).append(e)
    for what, run_id in traffic.run_ids.items():
        [entry] = [e for e in by_run[run_id] if e["method"] == "POST" and "/stop/" not in e["path"]]
        assert entry["status"] == 200, (what, entry)
        assert entry["duration_ms"] >= 0 and entry["key_id"]
    # Lines written while a run works carry its id: the provider retried the 500.
    retried = [e for e in lines if e["run_id"] == traffic.run_ids["boom"]]
    assert any(e["msg"].startswith("retrying openai") for e in retried), retried
    # The query line shows the known parameters only.
    [query] = by_run[traffic.run_ids["query"]]
    assert query["path"] == f"/stream_exported_flow?flow_id=echo&org={traffic.server.org}"
    # The stop request and the stopped run's stream: two request lines with its run id, and
    # the line saying it was stopped.
    stopped = traffic.run_ids["stopped"]
    stopped_lines = [e for e in lines if e["run_id"] == stopped]
    paths = sorted(
        e["path"].split("?")[0] for e in stopped_lines if e["logger"] == "flowserve.access"
    )
    assert paths == [
        f"/inference/v0/stop/{traffic.server.org}/long",
        f"/inference/v0/stream/{traffic.server.org}/long",
    ]
    assert any(e["msg"].startswith("run stopped by request") for e in stopped_lines)
    left = [e for e in lines if e["run_id"] == traffic.run_ids["left"]]
    assert any("client disconnected" in e["msg"] for e in left)
    # Refused requests are logged too, with their status and no run.
    refused = [e for e in requests if e["status"] == 401]
    assert len(refused) >= 3 and all(e["run_id"] is None for e in refused)


@pytest.mark.anyio
async def test_key_checks_do_the_same_work_whether_the_key_id_exists_or_not(tmp_path, monkeypatch):
    """No timing oracle on key ids: an unknown id is hashed and compared like a known one."""
    import flowserve.auth as auth
    from flowserve.errors import AuthError
    from flowserve.store.database import Database
    from flowserve.store.keys import KeyStore

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    await db.create_schema()
    keys = KeyStore(db)
    await keys.create_org("acme")
    good = await keys.create_key("acme", auth.PUBLIC)
    revoked = await keys.create_key("acme", auth.PUBLIC)
    await keys.revoke(revoked.key_id)
    calls: list[str] = []
    real_hash, real_compare = auth.hash_secret, auth.hmac.compare_digest
    monkeypatch.setattr(auth, "hash_secret", lambda s, x: calls.append("hash") or real_hash(s, x))
    monkeypatch.setattr(
        auth.hmac, "compare_digest", lambda a, b: calls.append("compare") or real_compare(a, b)
    )
    secret = good.token.split("-", 3)[3]
    cases = [
        (good.key_id, secret, True),
        (good.key_id, "x" * len(secret), False),  # wrong secret
        ("zzzzzzzzzzzz", secret, False),  # unknown id
        (revoked.key_id, revoked.token.split("-", 3)[3], False),  # revoked
    ]
    try:
        for key_id, given, valid in cases:
            calls.clear()
            if valid:
                assert (await keys.verify(key_id, given)).key_id == key_id
            else:
                with pytest.raises(AuthError, match=r"^invalid API key$"):
                    await keys.verify(key_id, given)
            assert calls == ["hash", "compare"], (key_id, calls)
    finally:
        await db.aclose()
