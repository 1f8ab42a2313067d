"""Run history over HTTP (``GET /v1/orgs/{org}/runs[/{run_id}]``) against a real server, and
the store's queries behind it on SQLite and PostgreSQL (which must be running on
127.0.0.1:5432, as for tests/test_store.py)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
import pytest

from flowserve.config import Settings
from flowserve.services import Services
from flowserve.store.runs import Position, RunFilters
from tests.conftest import Server, make_org, start_server, stop_server

TIMED = """
id: timed
inputs: {in-0: {default: "a b"}}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?first_delay=0.3", prompt: "{in-0}"}
  llm-1: {type: llm, provider: scripted, model: "echo?delay=0.01", prompt: "then {llm-0}"}
outputs: {out-0: llm-1}
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("history"),
        env={"FLOWSERVE_RECORD_DELAY": "0.05", "FLOWSERVE_RATE_LIMIT_PER_MINUTE": "0"},
    )
    try:
        for name in ("echo.yaml", "failing.yaml", "chain.yaml"):
            server.publish_file(name)
        assert server.publish(TIMED).status_code == 201
        yield server
    finally:
        stop_server(server)


def run(server: Server, flow: str, user: str | None = None, **inputs: str) -> dict[str, Any]:
    body: dict[str, Any] = dict(inputs)
    if user is not None:
        body["user_id"] = user
    r = httpx.post(
        f"{server.base_url}/inference/v0/run/{server.org}/{flow}",
        json=body,
        headers=server.auth(),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    envelope: dict[str, Any] = r.json()
    return envelope


def history(
    server: Server, *, key: str | None = None, org: str | None = None, **params: Any
) -> httpx.Response:
    return httpx.get(
        f"{server.base_url}/v1/orgs/{org or server.org}/runs",
        params=params,
        headers=server.auth(key or server.private_key),
        timeout=30,
    )


def listed(server: Server, **params: Any) -> list[dict[str, Any]]:
    r = history(server, **params)
    assert r.status_code == 200, r.text
    runs: list[dict[str, Any]] = r.json()["runs"]
    return runs


def show(server: Server, run_id: str, key: str | None = None) -> httpx.Response:
    return httpx.get(
        f"{server.base_url}/v1/orgs/{server.org}/runs/{run_id}",
        headers=server.auth(key or server.private_key),
        timeout=30,
    )


def user() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


def problems(r: httpx.Response) -> list[tuple[list[str], str]]:
    assert r.status_code == 422, r.text
    return [(d["loc"], d["type"]) for d in r.json()["detail"]]


def test_a_run_record_has_its_nodes_timings_and_usage(srv: Server):
    who = user()
    run_id = run(srv, "timed", who, **{"in-0": "x y z"})["run_id"]
    r = show(srv, run_id)
    assert r.status_code == 200, r.text
    record = r.json()
    assert (record["run_id"], record["flow_id"], record["state"]) == (run_id, "timed", "COMPLETED")
    assert record["inputs"] == {"in-0": "x y z"} and record["outputs"] == {"out-0": "then x y z"}
    assert record["user_id"] == who and record["error"] is None and record["error_node"] is None
    nodes = record["nodes"]
    assert set(nodes) == {"llm-0", "llm-1"}
    first, second = nodes["llm-0"], nodes["llm-1"]
    assert first["state"] == second["state"] == "COMPLETED"
    assert first["duration_ms"] >= 300  # first_delay=0.3 in the flow
    assert second["started_ms"] >= first["started_ms"] + first["duration_ms"] - 0.01
    total = record["timings"]["total_ms"]
    assert total >= second["started_ms"] + second["duration_ms"] - 1
    assert record["usage"]["llm-0"] == {"prompt_tokens": 3, "completion_tokens": 3}
    assert record["usage_total"] == {"prompt_tokens": 7, "completion_tokens": 7, "total_tokens": 14}
    created = datetime.fromisoformat(record["created_at"])
    finished = datetime.fromisoformat(record["finished_at"])
    assert created.utcoffset() == timedelta(0) and finished > created
    # The v0 metadata route gives the same record, nodes included.
    metadata = httpx.get(
        f"{srv.base_url}/inference/v0/run/{srv.org}/timed/metadata",
        params={"run_id": run_id},
        headers=srv.auth(srv.private_key),
        timeout=30,
    )
    assert metadata.status_code == 200 and metadata.json() == record
    # A listing has the summary, not the texts.
    [item] = listed(srv, user_id=who)
    assert item["run_id"] == run_id and item["usage_total"]["total_tokens"] == 14
    assert item["timings"] == record["timings"] and item["created_at"] == record["created_at"]
    assert not {"inputs", "outputs", "error", "nodes"} & set(item)


def test_a_failed_run_names_its_error_and_node(srv: Server):
    who = user()
    run_id = run(srv, "failing", who)["run_id"]
    record = show(srv, run_id).json()
    assert record["state"] == "FAILED" and "scripted failure" in record["error"]
    assert record["error_node"] == "llm-0" and record["error_type"] == "provider_upstream_error"
    assert record["nodes"]["llm-0"]["state"] == "FAILED"
    assert record["outputs"]["out-0"] == "one two three"
    [item] = listed(srv, user_id=who, state="FAILED")
    assert item["run_id"] == run_id and item["error_type"] == "provider_upstream_error"
    assert listed(srv, user_id=who, state="COMPLETED") == []


def test_each_filter_keeps_only_its_runs(srv: Server):
    one, two = user(), user()
    echo_1 = run(srv, "echo", one, **{"in-0": "a"})["run_id"]
    chain_1 = run(srv, "chain", one, **{"in-0": "b"})["run_id"]
    failed_1 = run(srv, "failing", one)["run_id"]
    echo_2 = run(srv, "echo", two, **{"in-0": "c"})["run_id"]
    ids = lambda **p: [r["run_id"] for r in listed(srv, **p)]  # noqa: E731
    assert ids(user_id=one) == [failed_1, chain_1, echo_1]  # newest first
    assert ids(user_id=two) == [echo_2]
    assert ids(user_id=one, flow_id="echo") == [echo_1]
    assert ids(user_id=one, flow_id="chain") == [chain_1]
    assert ids(user_id=one, state="FAILED") == [failed_1]
    assert ids(user_id=one, state="CANCELLED") == []
    assert ids(user_id=one, flow_id="nope") == []
    everything = ids(limit=500)
    assert {echo_1, chain_1, failed_1, echo_2} <= set(everything)
    flows = {r["flow_id"] for r in listed(srv, flow_id="echo", limit=500)}
    assert flows == {"echo"}
    states = {r["state"] for r in listed(srv, state="FAILED", limit=500)}
    assert states == {"FAILED"}


def test_a_time_range_keeps_runs_created_in_it(srv: Server):
    who = user()
    ids = [run(srv, "echo", who, **{"in-0": str(i)})["run_id"] for i in range(3)]
    created = {r["run_id"]: r["created_at"] for r in listed(srv, user_id=who)}
    first, middle, last = (created[i] for i in ids)

    def between(**p: str) -> list[str]:
        return [r["run_id"] for r in listed(srv, user_id=who, **p)]

    assert between(since=middle) == [ids[2], ids[1]]  # since is inclusive
    assert between(until=middle) == [ids[0]]  # until is not
    assert between(since=first, until=last) == [ids[1], ids[0]]
    assert between(since=middle, until=middle) == []
    # The same instant written with Z, or in another zone, is the same filter.
    at = datetime.fromisoformat(middle)
    zulu = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    east = at.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    assert between(since=zulu) == between(since=east) == [ids[2], ids[1]]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert between(since=future) == []


def test_pages_have_no_gaps_and_no_repeats_while_runs_arrive(srv: Server):
    who = user()
    for i in range(7):
        run(srv, "echo", who, **{"in-0": f"r{i}"})
    before = [r["run_id"] for r in listed(srv, user_id=who, limit=500)]
    assert len(before) == 7
    seen: list[str] = []
    sizes: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"user_id": who, "limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = history(srv, **params).json()
        seen += [r["run_id"] for r in page["runs"]]
        sizes.append(len(page["runs"]))
        cursor = page["next_cursor"]
        if cursor is None:
            break
        run(srv, "echo", who, **{"in-0": "arrived meanwhile"})  # newer than every page
    assert seen == before and sizes == [3, 3, 1]
    assert len(listed(srv, user_id=who, limit=500)) == 9
    # A page that ends exactly at the last run says there is nothing after it.
    exact = history(srv, user_id=who, limit=9).json()
    assert len(exact["runs"]) == 9 and exact["next_cursor"] is None


def _cursor(srv: Server, **params: Any) -> str:
    page = history(srv, limit=1, **params).json()
    assert page["next_cursor"], page
    cursor: str = page["next_cursor"]
    return cursor


def test_bad_filters_and_cursors_are_422_naming_the_parameter(srv: Server):
    who = user()
    for i in range(2):
        run(srv, "echo", who, **{"in-0": str(i)})
    assert problems(history(srv, state="DONE")) == [(["query", "state"], "enum")]
    assert problems(history(srv, state="completed")) == [(["query", "state"], "enum")]
    assert problems(history(srv, since="yesterday")) == [(["query", "since"], "datetime_parsing")]
    assert problems(history(srv, since="2025-01-31")) == [(["query", "since"], "datetime_parsing")]
    assert problems(history(srv, until="2025-02-30T00:00:00Z")) == [
        (["query", "until"], "datetime_parsing")
    ]
    assert problems(history(srv, since="2025-01-31T09:30:00")) == [
        (["query", "since"], "timezone_aware")
    ]
    # A "+" written raw in a URL is a space: the answer says how to write it.
    raw = httpx.get(
        f"{srv.base_url}/v1/orgs/{srv.org}/runs?since=2025-01-31T09:30:00+01:00",
        headers=srv.auth(srv.private_key),
        timeout=30,
    )
    assert problems(raw) == [(["query", "since"], "datetime_parsing")]
    assert "%2B" in raw.json()["detail"][0]["msg"]
    later, earlier = "2025-02-01T00:00:00Z", "2025-01-01T00:00:00Z"
    assert problems(history(srv, since=later, until=earlier)) == [
        (["query", "until"], "value_error")
    ]
    assert problems(history(srv, limit=0)) == [(["query", "limit"], "greater_than_equal")]
    assert problems(history(srv, limit=501)) == [(["query", "limit"], "less_than_equal")]
    # Every wrong parameter in one answer.
    assert problems(history(srv, state="x", limit="many", cursor="!")) == [
        (["query", "state"], "enum"),
        (["query", "limit"], "int_parsing"),
        (["query", "cursor"], "value_error"),
    ]
    good = _cursor(srv, user_id=who)
    assert len(history(srv, user_id=who, cursor=good).json()["runs"]) == 1
    micros, run_id, check = json.loads(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))
    for forged in ([micros - 1, run_id, check], [micros, "0" * 32, check], [micros, run_id]):
        text = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
        assert problems(history(srv, user_id=who, cursor=text)) == [
            (["query", "cursor"], "value_error")
        ]
    for garbage in ("abc", "====", good[:-3], good + "AA", "x" * 257, "W10", "WyJhIl0"):
        assert problems(history(srv, user_id=who, cursor=garbage)) == [
            (["query", "cursor"], "string_too_long" if len(garbage) > 256 else "value_error")
        ]
    # A cursor belongs to its listing: other filters, or another org, refuse it.
    assert problems(history(srv, cursor=good)) == [(["query", "cursor"], "value_error")]
    assert problems(history(srv, user_id=who, state="COMPLETED", cursor=good)) == [
        (["query", "cursor"], "value_error")
    ]
    org = f"other-{uuid.uuid4().hex[:6]}"
    _, private = make_org(srv.database_url, org)
    assert problems(history(srv, key=private, org=org, user_id=who, cursor=good)) == [
        (["query", "cursor"], "value_error")
    ]


def test_history_needs_a_private_key_of_the_org_and_hides_other_orgs_runs(srv: Server):
    run_id = run(srv, "echo", user(), **{"in-0": "mine"})["run_id"]
    refused = history(srv, key=srv.public_key)
    assert refused.status_code == 403 and "read run records" in refused.json()["detail"]
    assert show(srv, run_id, key=srv.public_key).status_code == 403
    assert history(srv, key="fs-priv-aaaaaaaaaaaa-" + "b" * 43).status_code == 401
    other = f"other-{uuid.uuid4().hex[:6]}"
    _, private = make_org(srv.database_url, other)
    assert history(srv, key=private).status_code == 401  # its key, this org's URL
    theirs = httpx.get(
        f"{srv.base_url}/v1/orgs/{other}/runs/{run_id}",
        headers=srv.auth(private),
        timeout=30,
    )
    unknown = show(srv, "no-such-run")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == {"detail": f"run {run_id!r} not found"}
    metadata = httpx.get(
        f"{srv.base_url}/inference/v0/run/{other}/echo/metadata",
        params={"run_id": run_id},
        headers=srv.auth(private),
        timeout=30,
    )
    assert metadata.status_code == 404
    assert history(srv, key=private, org=other).json() == {"runs": [], "next_cursor": None}


def test_the_document_describes_the_filters(srv: Server):
    schema = httpx.get(f"{srv.base_url}/openapi.json", timeout=30).json()
    operation = schema["paths"]["/v1/orgs/{org}/runs"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert params["state"]["schema"] == {
        "type": "string",
        "enum": ["RUNNING", "COMPLETED", "FAILED", "CANCELLED"],
    }
    assert params["since"]["schema"]["format"] == "date-time"
    assert params["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 500,
        "default": 50,
    }
    assert not any(p["required"] for name, p in params.items() if name != "org")
    shown = schema["paths"]["/v1/orgs/{org}/runs/{run_id}"]["get"]
    assert {"401", "403", "404", "422"} <= set(shown["responses"])


# -- the store, on both databases -------------------------------------------------------

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def services(request, tmp_path):
    dbname = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
    else:
        dbname = f"flowserve_test_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'CREATE DATABASE "{dbname}"')
        await admin.close()
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}"
    state = Services.build(Settings(database_url=url))
    await state.db.create_schema()
    try:
        yield state
    finally:
        await state.aclose()
        if dbname:
            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
            await admin.close()


def _row(run_id: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "id": run_id,
        "org_id": "acme",
        "flow_id": "echo",
        "flow_version": 1,
        "key_id": "k",
        "state": "COMPLETED",
        "inputs": {},
        "outputs": {},
        "usage": {},
        "queued_at": at,
        **fields,
    }


@pytest.mark.anyio
async def test_the_store_pages_newest_first_through_ties(services):
    store = services.runs.store
    # Three runs queued at the same microsecond (told apart by id), others around them, of
    # another flow, state and org.
    rows = [
        _row("a", T0),
        _row("b", T0 + timedelta(microseconds=1)),
        _row("c", T0 + timedelta(microseconds=1)),
        _row("d", T0 + timedelta(microseconds=1)),
        _row("e", T0 + timedelta(seconds=1)),
        _row("f", T0 + timedelta(seconds=2), flow_id="chain", state="FAILED", user_id="u"),
        _row("g", T0 + timedelta(seconds=3), org_id="other"),
    ]
    for row in rows:
        await store.start(row)
    everything = RunFilters()
    newest = [r.id for r in await store.list("acme", everything, 100)]
    assert newest == ["f", "e", "d", "c", "b", "a"]
    pages, after = [], None
    while True:
        page = await store.list("acme", everything, 2, after)
        if not page:
            break
        pages.append([r.id for r in page])
        after = page[-1].position
    assert pages == [["f", "e"], ["d", "c"], ["b", "a"]]
    after_c = Position(T0 + timedelta(microseconds=1), "c")
    assert [r.id for r in await store.list("acme", everything, 100, after_c)] == ["b", "a"]
    assert [r.id for r in await store.list("acme", RunFilters(flow_id="chain"), 9)] == ["f"]
    assert [r.id for r in await store.list("acme", RunFilters(state="FAILED"), 9)] == ["f"]
    assert [r.id for r in await store.list("acme", RunFilters(user_id="u"), 9)] == ["f"]
    west = timezone(timedelta(hours=-7))  # a filter in another zone than the stored UTC
    since = (T0 + timedelta(microseconds=1)).astimezone(west)
    window = RunFilters(since=since, until=T0 + timedelta(seconds=2))
    assert [r.id for r in await store.list("acme", window, 9)] == ["e", "d", "c", "b"]
    summary = (await store.list("acme", everything, 1))[0]
    assert summary.queued_at == T0 + timedelta(seconds=2) and summary.queued_at.tzinfo


@pytest.mark.anyio
async def test_the_store_tells_a_follower_what_changed(services):
    store = services.runs.store
    await store.start(_row("old", T0))
    await store.start(_row("long", T0, state="RUNNING"))
    await store.start(_row("new", T0 + timedelta(minutes=5)))
    await store.start(_row("chain", T0 + timedelta(minutes=5), flow_id="chain"))
    horizon = T0 + timedelta(minutes=1)
    assert [r.id for r in await store.changed("acme", None, horizon)] == ["long", "chain", "new"]
    assert [r.id for r in await store.changed("acme", "echo", horizon)] == ["long", "new"]
    await store.finish("long", state="COMPLETED")
    assert [r.id for r in await store.changed("acme", "echo", horizon)] == ["new"]
    watched = await store.changed("acme", "echo", horizon, ["long"])
    assert [(r.id, r.state) for r in watched] == [("long", "COMPLETED"), ("new", "COMPLETED")]
