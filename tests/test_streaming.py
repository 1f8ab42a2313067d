"""Stream framing details: keepalive comments and adaptive coalescing (contract 2.3)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests import sse
from tests.conftest import start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = start_server(
        tmp_path_factory.mktemp("streaming"), env={"FLOWSERVE_KEEPALIVE_INTERVAL": "0.2"}
    )
    server.publish("""
id: quiet
inputs: {in-0: {default: "late answer"}}
nodes: {llm-0: {type: llm, provider: scripted, model: "echo?first_delay=1", prompt: "{in-0}"}}
outputs: {out-0: llm-0}
""")
    server.publish("""
id: flood
inputs: {in-0: {default: "w"}}
nodes: {llm-0: {type: llm, provider: scripted, model: "echo?repeat=6000", prompt: "{in-0}"}}
outputs: {out-0: llm-0}
""")
    server.publish("""
id: paced
inputs: {in-0: {default: "a b c d e f g h i j"}}
nodes: {llm-0: {type: llm, provider: scripted, model: "echo?delay=0.02", prompt: "{in-0}"}}
outputs: {out-0: llm-0}
""")
    server.publish("""
id: instant
inputs: {in-0: {default: "x"}}
nodes: {t0: {type: template, template: "{in-0}A"}}
outputs: {out-0: t0, out-1: in-0}
""")
    try:
        yield server
    finally:
        stop_server(server)


def test_keepalive_is_a_lone_comment_line(srv):
    url = f"{srv.base_url}/stream_exported_flow?flow_id=quiet&org={srv.org}"
    r = httpx.post(url, headers=srv.auth(), json={}, timeout=30)
    assert r.text.count(": keepalive\n") >= 3
    assert ": keepalive\n\n" not in r.text  # never a blank line: no empty onmessage
    messages = list(sse.parse(r.text))
    assert all(m.data for m in messages)  # every dispatched message parses as JSON
    assert messages[-1].json() == {"out-0": "late answer"}


def test_a_client_that_keeps_up_gets_every_token_at_once(srv):
    url = f"{srv.base_url}/stream_exported_flow?flow_id=paced&org={srv.org}&delta=true"
    r = httpx.post(url, headers=srv.auth(), json={}, timeout=30)
    frames = [m.json()["out-0"] for m in sse.parse(r.text)]
    # One frame to open, then one per token: nothing was held back or merged.
    assert frames == ["", "a", " b", " c", " d", " e", " f", " g", " h", " i", " j"]


def read_slowly(server, flow: str) -> list[str]:
    """Stream ``flow`` through a client that reads nothing for a second; its messages."""
    body = json.dumps({}).encode()
    request = (
        f"POST /stream_exported_flow?flow_id={flow}&org={server.org} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {server.public_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    port = int(server.base_url.rsplit(":", 1)[1])
    chunks = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        time.sleep(1.0)  # a client that is not reading: the server's writes back up
        while data := sock.recv(65536):
            chunks.append(data)
    raw = b"".join(chunks).decode()
    head, _, payload = raw.partition("\r\n\r\n")
    assert " 200 " in head.splitlines()[0]
    # De-chunk the HTTP/1.1 body.
    text, rest = [], payload
    while rest:
        size_line, _, rest = rest.partition("\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        text.append(rest[:size])
        rest = rest[size + 2 :]
    return [m.json()["out-0"] for m in sse.parse("".join(text))]


def test_a_slow_client_gets_merged_updates_and_the_whole_answer(srv):
    messages = read_slowly(srv, "flood")
    assert messages[-1] == " ".join(["w"] * 6000)
    # 6000 tokens, far fewer messages: pending updates were merged while the client lagged.
    assert len(messages) < 4500
    assert all(messages[i + 1].startswith(messages[i]) for i in range(len(messages) - 1))


def test_with_coalescing_off_every_token_is_its_own_message(tmp_path):
    """The switch the benchmark uses to measure what coalescing saves really turns it off."""
    server = start_server(tmp_path, env={"FLOWSERVE_STREAM_COALESCE": "false"})
    try:
        server.publish("""
id: flood
inputs: {in-0: {default: "w"}}
nodes: {llm-0: {type: llm, provider: scripted, model: "echo?repeat=3000", prompt: "{in-0}"}}
outputs: {out-0: llm-0}
""")
        messages = read_slowly(server, "flood")
    finally:
        stop_server(server)
    assert messages[-1] == " ".join(["w"] * 3000)
    assert len(messages) >= 3000  # one per token (plus the first, empty one)


@pytest.mark.parametrize("route", ["legacy", "v0-sse", "v0-ndjson"])
def test_deltas_of_nodes_that_finish_at_once_add_up_to_the_output_once(srv, route):
    """A one-node template flow finishes before the stream's first frame is written: its
    text must come once, in the deltas, not also in the first frame."""
    base, org = srv.base_url, srv.org
    url = {
        "legacy": f"{base}/stream_exported_flow?flow_id=instant&org={org}&delta=true",
        "v0-sse": f"{base}/inference/v0/stream/{org}/instant?sse=true",
        "v0-ndjson": f"{base}/inference/v0/stream/{org}/instant",
    }[route]
    r = httpx.post(url, headers=srv.auth(), json={"in-0": "q"}, timeout=30)
    assert r.status_code == 200
    if route == "v0-ndjson":
        frames = [json.loads(line)["outputs"] for line in r.text.splitlines()]
    elif route == "v0-sse":
        frames = [m.json()["outputs"] for m in sse.parse(r.text)]
    else:
        frames = [m.json() for m in sse.parse(r.text)]
    joined = {out: "".join(f.get(out, "") for f in frames) for out in ("out-0", "out-1")}
    assert joined == {"out-0": "qA", "out-1": "q"}
