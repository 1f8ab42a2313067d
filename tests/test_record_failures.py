"""A run record the database will not take is retried, and if it is lost that shows: in
/metrics (a counter) and in /healthz (503 naming the problem), not only in a log line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from flowserve.config import Settings
from flowserve.http.app import create_app
from flowserve.store._group_commit import RunWriter
from tests.conftest import FLOWS, make_org


@pytest.fixture
def app_client(tmp_path, monkeypatch) -> Iterator[tuple[TestClient, dict[str, str], list[int]]]:
    """A server in this process whose next ``failures[0]`` run-record writes fail; its
    public key's header, and (as ``auth["private"]``) the private key's."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    public, private = make_org(url, "acme")
    failures = [0]  # how many writes are still to fail
    real_write = RunWriter._write

    async def flaky_write(self: RunWriter, rows: Any) -> None:
        if failures[0] > 0:
            failures[0] -= 1
            raise OperationalError("INSERT INTO runs ...", {}, Exception("database is locked"))
        await real_write(self, rows)

    monkeypatch.setattr(RunWriter, "_write", flaky_write)
    monkeypatch.setattr(RunWriter, "retry_delays", (0.0, 0.0))
    settings = Settings(database_url=url, warm_up=False, record_delay=10.0, test_providers=True)
    with TestClient(create_app(settings)) as client:
        published = client.post(
            "/v1/orgs/acme/flows",
            content=(FLOWS / "echo.yaml").read_text(),
            headers={"Authorization": f"Bearer {private}"},
        )
        assert published.status_code == 201, published.text
        auth = {"Authorization": f"Bearer {public}", "private": f"Bearer {private}"}
        yield client, auth, failures


def _lost(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("flowserve_run_record_write_failures_total "):
            return float(line.split()[1])
    raise AssertionError("no flowserve_run_record_write_failures_total in /metrics")


def _run(client: TestClient, auth: dict[str, str]) -> str:
    headers = {"Authorization": auth["Authorization"]}
    r = client.post("/inference/v0/run/acme/echo", json={"in-0": "a b"}, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["run_id"])


def test_a_write_that_fails_twice_is_retried_and_the_record_lands(app_client) -> None:
    client, auth, failures = app_client
    failures[0] = 2
    run_id = _run(client, auth)
    assert failures[0] == 0  # both failures were met
    record = client.get(
        f"/inference/v0/run/acme/echo/metadata?run_id={run_id}",
        headers={"Authorization": auth["private"]},
    )
    assert record.status_code == 200 and record.json()["state"] == "COMPLETED"
    assert _lost(client) == 0
    assert client.get("/healthz").json() == {"status": "ok"}


def test_a_record_lost_for_good_is_counted_and_unhealthy(app_client) -> None:
    client, auth, failures = app_client
    failures[0] = 3  # every try of one write
    _run(client, auth)
    assert _lost(client) == 1
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["status"] == "degraded"
    assert "OperationalError" in health.json()["problem"]
    assert "database is locked" not in json.dumps(health.json())  # no driver detail
