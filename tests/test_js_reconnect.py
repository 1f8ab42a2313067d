"""The docs' client recovers by itself (contract 2.5): ``@microsoft/fetch-event-source``
(the real npm package, in Node) streams a run through a TCP proxy that cuts the connection
mid-stream; the library's automatic retry re-POSTs with ``last-event-id`` and gets the
continuation of the same run. The answer it ends with is the whole answer, one run is
recorded, and the upstream model server was asked once."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx
import pytest

from tests.conftest import start_server, stop_server
from tests.fakes import OpenAIFake, Scenario, serve
from tests.fakes.cutting_proxy import CuttingProxy
from tests.fakes.openai_wire import DEFAULT_KEY as OPENAI_KEY
from tests.test_js_client import JS_DIR, SCRIPT, node  # noqa: F401 (node is a fixture)

pytestmark = pytest.mark.slow

TOKENS = [f"tok{i} " for i in range(30)]


def flow(openai: OpenAIFake) -> str:
    return f"""
id: upstream
inputs: {{in-0: {{}}}}
nodes:
  gpt: {{type: llm, provider: openai, model: gpt-4o-mini, base_url: "{openai.v1}", prompt: "{{in-0}}"}}
outputs:
  out-0: gpt
"""


def client(node: str, base: str, server: Any, mode: str) -> dict[str, Any]:  # noqa: F811
    done = subprocess.run(
        [
            node,
            str(SCRIPT),
            base,
            server.org,
            "upstream",
            server.public_key,
            json.dumps({"in-0": "tell me"}),
            mode,
        ],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def upstream():
    with serve(OpenAIFake()) as fake:
        yield fake


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream):
    srv = start_server(tmp_path_factory.mktemp("reconnect"), env={"OPENAI_API_KEY": OPENAI_KEY})
    try:
        assert srv.publish(flow(upstream)).status_code == 201
        yield srv
    finally:
        stop_server(srv)


def runs_recorded(server: Any) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{server.base_url}/v1/orgs/{server.org}/runs",
        params={"flow_id": "upstream", "limit": 500},
        headers=server.auth(server.private_key),
    )
    assert response.status_code == 200, response.text
    return response.json()["runs"]


def test_a_cut_connection_is_resumed_by_the_clients_own_retry(node, server, upstream):  # noqa: F811
    # the same run without a cut, for what the answer must be
    upstream.reset()
    upstream.script(Scenario(tokens=TOKENS, gap=0.02))
    uncut = client(node, server.base_url, server, "retry")
    assert uncut["error"] is None and uncut["requests"] == 1, uncut

    upstream.reset()
    upstream.script(Scenario(tokens=TOKENS, gap=0.05))
    before = len(runs_recorded(server))
    port = int(server.base_url.rsplit(":", 1)[1])
    with CuttingProxy(port, after=5).running() as proxy:
        cut = client(node, f"http://127.0.0.1:{proxy.port}", server, "retry")
    assert proxy.cut == 1 and proxy.connections == 2, (proxy.cut, proxy.connections)
    assert cut["error"] is None, cut
    assert cut["requests"] == 2 and cut["opens"] == 2, cut  # the library retried, once
    first_id, resumed_from = cut["sent_ids"]
    assert first_id is None and resumed_from is not None  # the retry said where it was
    assert cut["outputs"] == uncut["outputs"] == {"out-0": "".join(TOKENS)}
    runs = runs_recorded(server)
    assert len(runs) == before + 1  # the retry was not a new run
    assert runs[0]["run_id"] == resumed_from.split(":")[0] == cut["last_event_id"].split(":")[0]
    assert runs[0]["state"] == "COMPLETED"
    assert len(upstream.requests_to("/v1/chat/completions")) == 1  # the model was asked once


def test_the_published_snippet_rethrows_and_so_does_not_retry(node, server, upstream):  # noqa: F811
    upstream.reset()
    upstream.script(Scenario(tokens=TOKENS, gap=0.05))
    port = int(server.base_url.rsplit(":", 1)[1])
    with CuttingProxy(port, after=5).running() as proxy:
        cut = client(node, f"http://127.0.0.1:{proxy.port}", server, "docs")
    assert cut["requests"] == 1 and cut["error"] is not None, cut
