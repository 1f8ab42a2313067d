"""The command line, as a user types it (in-process through typer's runner)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from flowserve.cli import app
from tests.conftest import FLOWS


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWSERVE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


def test_init_creates_org_keys_and_example_flow_once(cli):
    first = cli("init")
    assert first.exit_code == 0, first.output
    keys = re.findall(r"fs-(?:pub|priv)-[a-z0-9]{12}-\S+", first.output)
    assert len(keys) == 2
    assert "Published flow 'support-bot' version 1" in first.output
    again = cli("init")
    assert again.exit_code == 0
    assert not re.findall(r"fs-pub-\S+", again.output)  # keys are shown once only
    listed = cli("flows", "list")
    assert "support-bot" in listed.output and " 1 " in listed.output


def test_publish_reports_every_problem_and_versions(cli, tmp_path):
    cli("init")
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: bad\nnodes: {a: {type: template, template: '{x}'}}\noutputs: {o: zz}\n")
    result = cli("flows", "publish", str(bad))
    assert result.exit_code == 1
    assert "nodes.a.template: unknown reference {x}" in result.output
    assert "outputs.o: points to unknown node or input 'zz'" in result.output
    good = tmp_path / "good.yaml"
    good.write_text((FLOWS / "echo.yaml").read_text())
    assert "version 1 (published)" in cli("flows", "publish", str(good)).output
    assert "version 1 (unchanged)" in cli("flows", "publish", str(good)).output
    good.write_text(good.read_text().replace("delay=0.01", "delay=0.02"))
    assert "version 2 (published)" in cli("flows", "publish", str(good)).output


def test_keys_create_list_revoke(cli):
    cli("init")
    created = cli("keys", "create", "--kind", "private", "--name", "ci")
    token = created.output.strip()
    assert token.startswith("fs-priv-")
    key_id = token.split("-")[2]
    listed = cli("keys", "list")
    assert key_id in listed.output and token not in listed.output
    assert cli("keys", "revoke", key_id).exit_code == 0
    assert "yes" in cli("keys", "list").output


def test_run_a_flow_file_prints_outputs(cli):
    result = cli("run", str(FLOWS / "chain.yaml"), "-i", "in-0=hello world", "--json")
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.output.strip().splitlines()[-1])
    assert outputs["out-0"] == "A hello world" and outputs["out-2"] == "C A hello world"


def test_run_streams_plain_text_when_piped(cli):
    result = cli("run", str(FLOWS / "echo.yaml"), "-i", "in-0=one two three")
    assert result.exit_code == 0
    assert result.output.startswith("one two three")


def test_run_a_published_flow_and_a_failing_one(cli):
    cli("init")
    cli("flows", "publish", str(FLOWS / "failing.yaml"))
    result = cli("run", "failing")
    assert result.exit_code == 1
    assert "FAILED" in result.output and "llm-0" in result.output
