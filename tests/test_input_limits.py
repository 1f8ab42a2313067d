"""Hostile request shapes: each refused with a clear 4xx naming the limit, before any run
starts (so no provider is ever called)."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from tests import sse
from tests.conftest import Server

pytestmark = pytest.mark.slow


def run_count(server: Server) -> int:
    with sqlite3.connect(server.database_url.split("///", 1)[1]) as db:
        return int(db.execute("SELECT count(*) FROM runs").fetchone()[0])


def send(server: Server, path: str, content: bytes | str, **headers: str) -> httpx.Response:
    return httpx.post(
        server.base_url + path.format(org=server.org),
        content=content,
        headers={**server.auth(), "Content-Type": "application/json", **headers},
        timeout=30,
    )


LEGACY = "/stream_exported_flow?flow_id=echo&org={org}"
V0 = "/inference/v0/stream/{org}/echo"


@pytest.mark.parametrize(
    ("path", "body", "status", "loc", "says"),
    [
        (
            LEGACY,
            json.dumps({f"in-{i}": "x" for i in range(65)}),
            422,
            ["body"],
            "too many inputs: 65 (the limit is 64)",
        ),
        (
            LEGACY,
            json.dumps({"in-0": "x" * 100_001}),
            422,
            ["body", "in-0"],
            "input 'in-0' is longer than 100000 characters",
        ),
        (
            V0,
            json.dumps({"i" * 5000: "x"}),
            422,
            ["body", "i" * 64],
            "is longer than 64 characters",
        ),
        (V0, "[" * 100_000 + "]" * 100_000, 422, ["body"], "deeper than 1024 levels"),
        (V0, '{"in-0":' + "[" * 5000 + "]" * 5000 + "}", 422, ["body"], "deeper than 1024"),
        (
            V0,
            '{"in-0":' + "[" * 1000 + "]" * 1000 + "}",
            422,
            ["body", "in-0"],
            "input 'in-0' must be a string",
        ),
        (V0, '{"in-0": "x", "user_id": "ann\\n"}', 422, ["body", "user_id"], "user_id"),
        (V0, json.dumps({"in-0": "x", "user_id": "u" * 257}), 422, ["body", "user_id"], "1-256"),
        (V0, json.dumps({"in-0": "x", "user_id": {"$ne": 1}}), 422, ["body", "user_id"], "user"),
        (
            "/inference/v0/stream/{org}/" + "f" * 65,
            "{}",
            422,
            ["path", "flow_id"],
            "at most 64 characters",
        ),
        ("/inference/v0/run/" + "o" * 65 + "/echo", "{}", 422, ["path", "org"], "at most 64"),
        (
            "/stream_exported_flow?flow_id=echo&org=" + "o" * 65,
            "{}",
            422,
            ["query", "org"],
            "at most 64",
        ),
        (LEGACY + "&version=99999999999999999999", "{}", 422, ["query", "version"], "less than"),
        (
            "/inference/v0/run/{org}/echo/metadata?run_id=" + "r" * 65,
            "",
            422,
            ["query", "run_id"],
            "at most 64",
        ),
    ],
)
def test_each_limit_is_a_clear_4xx_before_any_run(server: Server, path, body, status, loc, says):
    before = run_count(server)
    if "/metadata" in path:
        r = httpx.get(
            server.base_url + path.format(org=server.org),
            headers=server.auth(server.private_key),
            timeout=30,
        )
    else:
        r = send(server, path, body)
    assert r.status_code == status, r.text[:300]
    [problem] = r.json()["detail"]
    assert problem["loc"] == loc
    assert says in problem["msg"], problem["msg"]
    assert run_count(server) == before


def test_sizes_of_body_url_and_headers(server: Server):
    before = run_count(server)
    r = send(server, LEGACY, json.dumps({"in-0": "x" * 1_100_000}))
    assert r.status_code == 413 and r.json() == {"detail": "request body larger than 1048576 bytes"}
    r = send(server, LEGACY + "&pad=" + "p" * 5000, "{}")
    assert r.status_code == 414 and r.json() == {"detail": "URL longer than 4096 bytes"}
    r = send(server, LEGACY, "{}", **{"X-Padding": "p" * 40_000})
    assert r.status_code == 431 and r.json() == {"detail": "headers larger than 32768 bytes"}
    # The SSE framing of contract 2.2 applies to them too.
    r = send(server, LEGACY + "&pad=" + "p" * 5000, "{}", Accept="text/event-stream")
    assert r.status_code == 414
    [message] = list(sse.parse(r.text))
    assert message.json() == {
        "error": "URL longer than 4096 bytes",
        "detail": "URL longer than 4096 bytes",
        "status": 414,
    }
    assert run_count(server) == before


def test_limits_are_settings(tmp_path):
    from tests.conftest import start_server, stop_server

    srv = start_server(
        tmp_path,
        env={"FLOWSERVE_MAX_INPUTS": "2", "FLOWSERVE_MAX_INPUT_CHARS": "10"},
    )
    try:
        srv.publish_file("echo.yaml")
        r = send(srv, LEGACY, json.dumps({"in-0": "x" * 11}))
        assert r.status_code == 422
        assert r.json()["detail"][0]["msg"] == "input 'in-0' is longer than 10 characters"
        r = send(srv, LEGACY, json.dumps({"a": "1", "b": "2", "c": "3"}))
        assert r.json()["detail"][0]["msg"] == "too many inputs: 3 (the limit is 2)"
        r = send(srv, LEGACY, json.dumps({"in-0": "x" * 10}))
        assert r.status_code == 200
    finally:
        stop_server(srv)


@pytest.mark.parametrize("body", [b" ", b" \t\r\n", b"\x0b"])
def test_a_body_of_whitespace_is_no_json_and_runs_nothing(server: Server, body: bytes):
    before = run_count(server)
    r = send(server, "/run_deployed_flow?flow_id=echo&org={org}", body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["msg"] == "body is not valid JSON"
    assert run_count(server) == before
    empty = send(server, "/run_deployed_flow?flow_id=echo&org={org}", b"")  # no body: defaults
    assert empty.json()["detail"][0]["loc"] == ["body", "in-0"]  # echo's input has none
