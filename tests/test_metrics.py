"""/metrics: counts a user can act on, and nothing about tenants or secrets."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Server

pytestmark = pytest.mark.slow


def test_metrics_count_runs_and_tokens_without_ids_or_secrets(server: Server):
    run = f"{server.base_url}/run_deployed_flow?flow_id=echo&org={server.org}"
    for text in ("one two three", "four five"):
        assert httpx.post(run, headers=server.auth(), json={"in-0": text}).status_code == 200
    httpx.post(
        f"{server.base_url}/run_deployed_flow?flow_id=failing&org={server.org}",
        headers=server.auth(),
        json={},
    )
    page = httpx.get(f"{server.base_url}/metrics").text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line and not line.startswith("#")
    }
    assert values['flowserve_runs_total{state="COMPLETED"}'] >= 2
    assert values['flowserve_runs_total{state="FAILED"}'] >= 1
    assert values['flowserve_tokens_total{kind="completion_tokens",provider="scripted"}'] >= 5
    assert values["flowserve_runs_in_flight"] == 0
    for secret in (server.public_key, server.private_key, server.org):
        assert secret not in page
