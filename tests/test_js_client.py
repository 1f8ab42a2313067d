"""The Stack AI docs' JavaScript streaming client, run unchanged against flowserve.

tests/js/stackai_client.mjs is the docs' ``fetchEventSource`` example (contract 1.2, 1.3) on the
pinned ``@microsoft/fetch-event-source`` 2.0.1, driven by Node. It prints one JSON line: the last
outputs object the example holds, the error its promise rejected with, and counters.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests.conftest import Server

pytestmark = pytest.mark.slow

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT = JS_DIR / "stackai_client.mjs"
QUESTION = {"in-0": "What is the capital of France?"}


@pytest.fixture(scope="module")
def node() -> str:
    """Path to node, with tests/js/node_modules installed from the committed lock file."""
    node_bin = shutil.which("node")
    npm_bin = shutil.which("npm")
    if node_bin is None or npm_bin is None:
        pytest.fail(
            "node and npm are required for tests/test_js_client.py "
            f"(node={node_bin}, npm={npm_bin}); install Node.js >= 18"
        )
    if not (JS_DIR / "node_modules" / "@microsoft" / "fetch-event-source").is_dir():
        command = [npm_bin, "ci" if (JS_DIR / "package-lock.json").exists() else "install"]
        done = subprocess.run(
            [*command, "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` in {JS_DIR} failed ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}"
            )
    return node_bin


def run_client(
    node: str, server: Server, flow: str, inputs: dict[str, Any], key: str | None = None
) -> dict[str, Any]:
    done = subprocess.run(
        [
            node,
            str(SCRIPT),
            server.base_url,
            server.org,
            flow,
            server.public_key if key is None else key,
            json.dumps(inputs),
        ],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, (
        f"client crashed ({done.returncode}):\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got:\n{done.stdout}"
    result: dict[str, Any] = json.loads(lines[0])
    # The docs' onerror rethrows, so fetch-event-source must never re-POST.
    assert result["opens"] == 1, result
    assert result["requests"] == 1, result
    return result


def test_streams_the_complete_answer_from_the_embedded_model(node: str, server: Server) -> None:
    result = run_client(node, server, "local", QUESTION)
    assert result["error"] is None, result
    assert result["status"] == 200
    assert result["content_type"].startswith("text/event-stream"), result
    assert result["messages"] > 2, result  # it really streamed

    # The run the client streamed, as the server recorded it (the SSE id is "<run_id>:<seq>").
    run_id = result["last_event_id"].split(":")[0]
    record = httpx.get(
        f"{server.base_url}/inference/v0/run/{server.org}/local/metadata",
        params={"run_id": run_id},
        headers=server.auth(server.private_key),
        timeout=30,
    )
    assert record.status_code == 200, record.text
    stored = record.json()
    assert stored["state"] == "COMPLETED", stored
    assert stored["outputs"]["out-0"].strip()

    # The example overwrites `outputs` on every message: what it holds at the end must be the
    # whole answer, which only works if the legacy stream sends cumulative outputs.
    assert result["outputs"] == stored["outputs"]


def test_bad_key_rejects_with_the_401_message(node: str, server: Server) -> None:
    result = run_client(node, server, "local", QUESTION, key="not-a-real-key")
    assert result["status"] == 401, result
    assert result["content_type"].startswith("text/event-stream"), result
    assert result["messages"] == 1, result
    assert result["error"] is not None and "invalid api key" in result["error"].lower(), result
    assert result["outputs"]["status"] == 401, result


def test_unknown_input_rejects_with_the_422_message_naming_it(node: str, server: Server) -> None:
    result = run_client(node, server, "local", {"in-0": "hi", "in-9": "x"})
    assert result["status"] == 422, result
    assert result["content_type"].startswith("text/event-stream"), result
    assert result["messages"] == 1, result
    assert result["error"] is not None and "in-9" in result["error"], result
    assert result["outputs"]["status"] == 422, result
    assert any("in-9" in d["loc"] for d in result["outputs"]["detail"]), result


def test_missing_input_rejects_with_the_422_message_naming_it(node: str, server: Server) -> None:
    result = run_client(node, server, "local", {})
    assert result["status"] == 422, result
    assert result["content_type"].startswith("text/event-stream"), result
    assert result["messages"] == 1, result
    assert result["error"] is not None and "in-0" in result["error"], result
    assert result["outputs"]["status"] == 422, result
    assert any("in-0" in d["loc"] for d in result["outputs"]["detail"]), result
