"""The README's run command, as a new user sees it: `flowserve quickstart` prints a key and a
curl command, and that curl command streams the example flow from the embedded model."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from importlib.metadata import metadata

import httpx
import pytest

from tests import sse
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow


def test_quickstart_prints_a_working_curl_command(tmp_path):
    assert shutil.which("curl"), "curl is needed for this test"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSERVE_")}
    log = (tmp_path / "quickstart.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "flowserve", "quickstart", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "COLUMNS": "300"},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        text = ""
        while time.monotonic() < deadline and "Application startup complete" not in text:
            assert process.poll() is None, text
            time.sleep(0.2)
            text = (tmp_path / "quickstart.log").read_text()
        assert "Application startup complete" in text, text
        assert (tmp_path / "flowserve.db").exists()
        curls = [line for line in text.splitlines() if line.startswith("curl ")]
        [curl] = [line for line in curls if "flow_id=support-bot" in line]
        assert re.search(r"Bearer fs-pub-", curl)
        assert f"127.0.0.1:{port}" in curl
        out = subprocess.run(
            [*shlex.split(curl), "-sS", "--max-time", "120"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        raw = list(sse.parse(out))
        messages = [m.json() for m in raw]
        assert len(messages) > 3
        final = messages[-1]
        assert set(final) == {"out-0", "out-1", "out-2"}
        assert final["out-2"] == f"Q: How do I reset my password?\nA: {final['out-0']}"
        # The last message is the whole answer: what the server recorded for this run (the
        # private key quickstart printed reads it; the SSE id is "<run_id>:<seq>").
        [private] = re.findall(r"private \(may publish flows, read runs\): (fs-priv-\S+)", text)
        run_id = (raw[-1].id or "").split(":")[0]
        record = httpx.get(
            f"http://127.0.0.1:{port}/inference/v0/run/default/support-bot/metadata",
            params={"run_id": run_id},
            headers={"Authorization": f"Bearer {private}"},
            timeout=30,
        ).json()
        assert record["state"] == "COMPLETED", record
        assert record["outputs"] == final
        # It prints the pages with its public key, which that page's own origin may use
        [page] = [w for w in text.split() if "/ui/default/support-bot#key=fs-pub-" in w]
        base, key = page.split("#key=")
        assert base == f"http://127.0.0.1:{port}/ui/default/support-bot"
        assert httpx.get(base).status_code == 200
        interface = httpx.get(
            f"http://127.0.0.1:{port}/v1/orgs/default/flows/support-bot/interface",
            headers={"Authorization": f"Bearer {key}", "Origin": f"http://127.0.0.1:{port}"},
        )
        assert interface.status_code == 200, interface.text
        assert interface.headers["access-control-allow-origin"] == f"http://127.0.0.1:{port}"
        # The second example answers from the KB holding the README, citing its chunks.
        [ask] = [line for line in curls if "/inference/v0/run/default/ask-flowserve" in line]
        envelope = json.loads(
            subprocess.run(
                [*shlex.split(ask), "-sS", "--max-time", "120"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert envelope["state"] == "COMPLETED", envelope
        assert envelope["outputs"]["out-0"].strip()  # an answer (its words are the model's)
        citations = envelope["citations"]
        assert citations and all(c["node_id"] == "kb-0" for c in citations)
        assert [c["index"] for c in citations] == list(range(1, len(citations) + 1))
        # the README as installed (the package's long description), which is README.md
        readme = metadata("flowserve")["Description"]
        assert readme.splitlines()[0] == (ROOT / "README.md").read_text().splitlines()[0]
        for citation in citations:
            assert citation["document_name"] == "README.md"
            assert citation["source"] == "knowledge_base" and citation["text"].strip()
            assert citation["text"] in readme  # a piece of the README, as given to the model
        context = envelope["outputs"]["out-1"]
        assert context.startswith("[1] README.md\n") and citations[0]["text"] in context
        # its url is the README itself, for the private key
        original = httpx.get(
            f"http://127.0.0.1:{port}{citations[0]['url']}",
            headers={"Authorization": f"Bearer {private}"},
            timeout=30,
        )
        assert original.status_code == 200 and original.text == readme
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
