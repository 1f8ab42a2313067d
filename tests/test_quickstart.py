"""The README's run command, as a new user sees it: `flowserve quickstart` prints a key and a
curl command, and that curl command streams the example flow from the embedded model."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from tests import sse
from tests.conftest import free_port

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
        [curl] = [line for line in text.splitlines() if line.startswith("curl ")]
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
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
