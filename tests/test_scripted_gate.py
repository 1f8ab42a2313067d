"""The scripted test provider exists only where a setting turns it on (tests, demos), and its
parameters are checked when a flow is published."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowserve.errors import FlowValidationError
from tests.conftest import FLOWS, start_server, stop_server
from tests.helpers import flow


def _env_without_test_providers() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "FLOWSERVE_TEST_PROVIDERS"}


def test_a_default_install_does_not_know_the_scripted_provider(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flowserve", "flows", "validate", str(FLOWS / "echo.yaml")],
        env=_env_without_test_providers(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "unknown provider 'scripted'" in done.stdout + done.stderr


@pytest.mark.slow
def test_a_server_with_test_providers_off_refuses_scripted_flows(tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"FLOWSERVE_TEST_PROVIDERS": "false"})
    try:
        response = server.publish((FLOWS / "echo.yaml").read_text())
        assert response.status_code == 422, response.text
        [problem] = response.json()["detail"]
        assert problem["loc"] == ["nodes", "llm-0", "provider"]
        assert "unknown provider 'scripted'" in problem["msg"]
    finally:
        stop_server(server)


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("echo?repeat=nan", "repeat must be a whole number"),
        ("echo?repeat=inf", "repeat must be a whole number"),
        ("echo?repeat=1e12", "repeat must be a whole number"),
        ("echo?repeat=10001", "repeat must be a whole number from 1 to 10000"),
        ("echo?repeat=0", "repeat must be a whole number"),
        ("echo?delay=nan", "delay must be a number from 0 to 60"),
        ("echo?delay=-1", "delay must be a number from 0 to 60"),
        ("echo?first_delay=inf", "first_delay must be a number from 0 to 60"),
        ("echo?fail_after=1.5", "fail_after must be a whole number"),
        ("echo?history=yes", "history must be 0 or 1"),
        ("echo?colour=red", "unknown parameter 'colour'"),
        ("echo?delay=x", "delay must be a number"),
        ("shout", "unknown scripted model 'shout'"),
    ],
)
def test_scripted_parameters_are_checked_at_publish(model: str, says: str) -> None:
    with pytest.raises(FlowValidationError) as info:
        flow(
            f"""
            id: f
            nodes:
              a: {{type: llm, provider: scripted, model: "{model}", prompt: "x"}}
            outputs: {{out-0: a}}
            """
        )
    [(loc, message)] = info.value.problems
    assert loc == "nodes.a.model"
    assert says in message


def test_valid_scripted_parameters_still_compile() -> None:
    compiled = flow(
        """
        id: f
        nodes:
          a: {type: llm, provider: scripted,
              model: "echo?delay=0.01&first_delay=0&fail_after=3&repeat=2&history=1&text=a+b",
              prompt: "x"}
        outputs: {out-0: a}
        """
    )
    assert compiled.nodes["a"].model is not None
