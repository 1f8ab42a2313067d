"""``flowserve kb …`` on a local database: the same knowledge bases the HTTP routes serve,
and files left pending by ``upload --no-wait`` indexed by the next server that starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_org, start_server, stop_server
from tests.kb_helpers import pdf, plain_zip

pytestmark = pytest.mark.slow  # subprocesses


def kb(*args: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowserve", "kb", *args, "--database-url", url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "250"},
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_kb_commands(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'flowserve.db'}"
    make_org(url, "default")
    (tmp_path / "faq.md").write_text(
        "# FAQ\n\n## Passwords\n\nReset your password from the login page.\n"
    )
    (tmp_path / "manual.pdf").write_bytes(pdf(["Unpack the box.", "Insert the toner cartridge."]))
    (tmp_path / "x.zip").write_bytes(plain_zip())

    kb_id = ok(kb("create", "--name", "Support", "--chunk-size", "800", url=url, cwd=tmp_path))
    kb_id = kb_id.strip()
    assert len(kb_id) == 36
    uploaded = ok(kb("upload", kb_id, "faq.md", "manual.pdf", url=url, cwd=tmp_path))
    assert uploaded.count("indexed") == 2 and "faq.md" in uploaded
    listed = ok(kb("list", url=url, cwd=tmp_path))
    assert kb_id in listed and "Support" in listed
    shown = ok(kb("show", kb_id, url=url, cwd=tmp_path))
    assert "2 (2 indexed, 0 error)" in shown and "800 characters" in shown
    assert "keyword (full-text)" in shown
    files = ok(kb("files", kb_id, url=url, cwd=tmp_path))
    assert "manual.pdf" in files and "application/pdf" in files

    found = ok(kb("search", kb_id, "toner", url=url, cwd=tmp_path))
    assert "manual.pdf" in found and "page 2" in found and "1.00" in found
    found = ok(kb("search", kb_id, "reset password", url=url, cwd=tmp_path))
    assert "FAQ > Passwords" in found

    refused = kb("upload", kb_id, "x.zip", url=url, cwd=tmp_path)
    assert refused.returncode == 1 and "unsupported file type 'application/zip'" in refused.stderr
    missing = kb("show", "00000000-0000-4000-8000-000000000000", url=url, cwd=tmp_path)
    assert missing.returncode == 1 and "knowledge base not found" in missing.stderr

    resource = next(line.split()[0] for line in uploaded.splitlines() if "manual.pdf" in line)
    ok(kb("download", kb_id, resource, "-o", "copy.pdf", url=url, cwd=tmp_path))
    assert (tmp_path / "copy.pdf").read_bytes() == (tmp_path / "manual.pdf").read_bytes()
    updated = ok(
        kb(
            "update",
            kb_id,
            "--name",
            "Help",
            "--chunk-size",
            "400",
            "--chunk-overlap",
            "100",
            url=url,
            cwd=tmp_path,
        )
    )
    assert "Help" in updated and "400 characters" in updated
    synced = ok(kb("sync", kb_id, url=url, cwd=tmp_path))  # indexes what the update queued
    assert "2 (2 indexed, 0 error)" in synced and "last synced" in synced
    ok(kb("rm", kb_id, resource, url=url, cwd=tmp_path))
    assert "manual.pdf" not in ok(kb("files", kb_id, url=url, cwd=tmp_path))
    assert "toner" not in ok(kb("search", kb_id, "toner", url=url, cwd=tmp_path))
    ok(kb("delete", kb_id, url=url, cwd=tmp_path))
    assert kb_id not in ok(kb("list", url=url, cwd=tmp_path))


def test_files_left_pending_are_indexed_by_the_next_server(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'flowserve.db'}"
    public, private = make_org(url, "acme")
    (tmp_path / "notes.txt").write_text("The vault combination is on the blue card.")
    kb_id = ok(kb("create", "--org", "acme", url=url, cwd=tmp_path)).strip()
    left = ok(kb("upload", kb_id, "notes.txt", "--no-wait", "--org", "acme", url=url, cwd=tmp_path))
    assert "pending" in left
    server = start_server(tmp_path, database_url=url, keys=(public, private))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = httpx.post(
                f"{server.base_url}/v1/knowledge-bases/{kb_id}/search",
                json={"query": "vault combination"},
                headers=server.auth(private),
                timeout=10,
            )
            if got.json()["results"]:
                break
            time.sleep(0.2)
        assert got.json()["results"][0]["document_name"] == "notes.txt"
    finally:
        stop_server(server)
