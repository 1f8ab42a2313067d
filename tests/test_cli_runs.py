"""``flowserve runs list|show|tail`` on the database a real server writes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from flowserve.cli import app
from tests.conftest import Server, start_server, stop_server

SLOW = """
id: slow
inputs: {in-0: {default: "one two three four five"}}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.25", prompt: "{in-0}"}
outputs: {out-0: llm-0}
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("cli-runs"), env={"FLOWSERVE_RECORD_DELAY": "0.05"}
    )
    try:
        for name in ("echo.yaml", "failing.yaml", "chain.yaml"):
            server.publish_file(name)
        assert server.publish(SLOW).status_code == 201
        yield server
    finally:
        stop_server(server)


def run(server: Server, flow: str, **body: Any) -> str:
    r = httpx.post(
        f"{server.base_url}/inference/v0/run/{server.org}/{flow}",
        json=body,
        headers=server.auth(),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    run_id: str = r.json()["run_id"]
    return run_id


@pytest.fixture
def cli(srv: Server):
    runner = CliRunner()

    def invoke(*args: str):
        where = ["--database-url", srv.database_url, "--org", srv.org]
        return runner.invoke(app, ["runs", *args, *where], catch_exceptions=False)

    return invoke


def test_list_shows_the_runs_newest_first_with_their_states(srv: Server, cli):
    done = run(srv, "echo", **{"in-0": "a b c", "user_id": "ann"})
    failed = run(srv, "failing", user_id="bob")
    result = cli("list")
    assert result.exit_code == 0, result.output
    out = result.output
    assert done in out and failed in out and out.index(failed) < out.index(done)
    assert "COMPLETED" in out and "FAILED" in out and "echo@1" in out and "failing@1" in out
    only_failed = cli("list", "--state", "failed").output
    assert failed in only_failed and done not in only_failed
    mine = cli("list", "--user", "ann", "--flow", "echo").output
    assert done in mine and failed not in mine
    assert "no runs" in cli("list", "--since", "2999-01-01T00:00:00Z").output
    assert done in cli("list", "--since", "10m").output
    assert done not in cli("list", "--until", "10m").output
    limited = cli("list", "--limit", "1").output
    assert failed in limited and done not in limited


def test_list_refuses_bad_options(cli):
    bad_state = cli("list", "--state", "DONE")
    assert bad_state.exit_code == 2 and "--state" in bad_state.output
    bad_time = cli("list", "--since", "yesterday")
    assert bad_time.exit_code == 2 and "offset or Z" in bad_time.output
    assert cli("list", "--limit", "0").exit_code == 2


def test_show_has_the_record_nodes_and_error(srv: Server, cli):
    chain = run(srv, "chain", **{"in-0": "hello"})
    shown = cli("show", chain)
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert chain in out and "COMPLETED" in out and "chain@1" in out
    for node in ("llm-0", "llm-1", "llm-2", "tpl-0"):
        assert node in out
    assert "A hello" in out  # an output
    failed = run(srv, "failing")
    out = cli("show", failed).output
    assert "FAILED" in out and "provider_upstream_error at llm-0" in out
    assert "scripted failure" in out
    missing = cli("show", "no-such-run")
    assert missing.exit_code == 1 and "not found" in missing.output


def test_tail_follows_a_new_run_to_its_end(srv: Server, tmp_path: Path):
    command = [sys.executable, "-m", "flowserve", "runs", "tail", "--org", srv.org]
    command += ["--database-url", srv.database_url, "--interval", "0.05"]
    command += ["--count", "2", "--timeout", "60"]
    env = {**os.environ, "COLUMNS": "200", "FLOWSERVE_RECORD_DELAY": "0.05"}
    before = run(srv, "echo", **{"in-0": "already there"})
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path, text=True
    ) as tail:
        assert tail.stderr is not None and tail.stdout is not None
        ready = tail.stderr.readline()
        assert "following the runs of 'acme'" in ready, ready + tail.stderr.read()
        started = run(srv, "slow")  # about 1.25 s: seen RUNNING, then COMPLETED
        out, err = tail.communicate(timeout=60)
    assert tail.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and before not in out, out
    assert started in lines[0] and "slow@1" in lines[0] and "RUNNING" in lines[0]
    assert started in lines[1] and "COMPLETED" in lines[1] and "ms" in lines[1]


def test_tail_stops_at_its_timeout_and_refuses_bad_options(cli):
    quiet = cli("tail", "--timeout", "0.3", "--flow", "nothing-runs-this")
    assert quiet.exit_code == 0 and "following" in quiet.output
    assert cli("tail", "--interval", "0").exit_code == 2
