"""The Python client against a real server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from flowserve import APIError, AsyncClient, Client, RunFailedError
from tests.conftest import Server

pytestmark = pytest.mark.slow


def test_stream_yields_cumulative_updates_and_run_returns_outputs(server: Server):
    with Client(server.base_url, server.public_key, server.org) as client:
        updates = list(client.stream("echo", {"in-0": "one two three"}))
        texts = [u.outputs["out-0"] for u in updates]
        assert texts[0] == "" and texts[-1] == "one two three"
        assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))
        assert updates[-1].state == "COMPLETED" and updates[-1].done
        assert updates[-1].metadata["usage"]["llm-0"]["completion_tokens"] == 3
        assert client.run("echo", {"in-0": "hi"}) == {"out-0": "hi"}


def test_errors_carry_status_and_message(server: Server):
    with Client(server.base_url, "fs-pub-aaaaaaaaaaaa-" + "b" * 43, server.org) as bad:
        with pytest.raises(APIError) as info:
            bad.run("echo", {"in-0": "x"})
        assert info.value.status == 401 and info.value.message == "invalid API key"
    with Client(server.base_url, server.public_key, server.org) as client:
        with pytest.raises(APIError) as info:
            list(client.stream("echo", {"wrong": "x"}))
        assert info.value.status == 422 and "wrong" in info.value.message
        with pytest.raises(APIError) as info:
            client.run("nope", {})
        assert info.value.status == 404
        with pytest.raises(RunFailedError) as failed:
            list(client.stream("failing", {}))
        assert failed.value.node_id == "llm-0" and "scripted failure" in failed.value.message
        assert failed.value.outputs["out-0"] == "one two three"


@pytest.mark.anyio
async def test_async_client(server: Server):
    async with AsyncClient(server.base_url, server.public_key, server.org) as client:
        updates = [u async for u in client.stream("echo", {"in-0": "a b"})]
        assert updates[-1].outputs == {"out-0": "a b"}
        assert await client.run("echo", {"in-0": "c"}) == {"out-0": "c"}
        with pytest.raises(RunFailedError):
            await client.run("failing", {})


def test_run_history_pages_and_records(server: Server):
    who = f"client-{uuid.uuid4().hex[:8]}"
    with (
        Client(server.base_url, server.public_key, server.org) as public,
        Client(server.base_url, server.private_key, server.org) as private,
    ):
        for text in ("a", "b c", "d e f"):
            public.run("echo", {"in-0": text}, user_id=who)  # recorded when it answers
        newest_first = [r["run_id"] for r in private.list_runs(user_id=who).runs]
        outputs = [private.get_run(run_id)["outputs"]["out-0"] for run_id in newest_first]
        assert outputs == ["d e f", "b c", "a"]
        page = private.list_runs(user_id=who, limit=2)
        assert [r["run_id"] for r in page.runs] == newest_first[:2] and page.next_cursor
        rest = private.list_runs(user_id=who, limit=2, cursor=page.next_cursor)
        assert [r["run_id"] for r in rest.runs] == newest_first[2:] and rest.next_cursor is None
        every = list(private.iter_runs(user_id=who, page_size=1))
        assert [r["run_id"] for r in every] == newest_first
        assert {r["state"] for r in every} == {"COMPLETED"}
        assert [r["run_id"] for r in private.iter_runs(user_id=who, flow_id="chain")] == []
        tomorrow = datetime.now(UTC) + timedelta(days=1)
        assert private.list_runs(user_id=who, since=tomorrow).runs == []
        assert len(private.list_runs(user_id=who, until=tomorrow).runs) == 3
        with pytest.raises(ValueError, match="timezone-aware"):
            private.list_runs(since=datetime.now())
        record = private.get_run(newest_first[0])
        assert record["outputs"] == {"out-0": "d e f"} and record["user_id"] == who
        assert record["nodes"]["llm-0"]["state"] == "COMPLETED"
        assert record["nodes"]["llm-0"]["duration_ms"] >= 20  # 3 tokens, 0.01 s before each
        assert private.run_metadata("echo", newest_first[0]) == record
        with pytest.raises(APIError) as info:
            public.list_runs()
        assert info.value.status == 403 and "read run records" in info.value.message
        with pytest.raises(APIError) as info:
            private.get_run("no-such-run")
        assert info.value.status == 404
        with pytest.raises(APIError) as info:
            private.list_runs(state="DONE", limit=0)
        assert info.value.status == 422
        assert "query.state" in info.value.message and "query.limit" in info.value.message


@pytest.mark.anyio
async def test_async_client_run_history(server: Server):
    who = f"client-{uuid.uuid4().hex[:8]}"
    async with AsyncClient(server.base_url, server.private_key, server.org) as client:
        await client.run("echo", {"in-0": "x"}, user_id=who)
        await client.run("echo", {"in-0": "y"}, user_id=who)
        every = [r async for r in client.iter_runs(user_id=who, page_size=1)]
        assert len(every) == 2 and every[0]["created_at"] > every[1]["created_at"]
        page = await client.list_runs(user_id=who, state="COMPLETED")
        assert [r["run_id"] for r in page.runs] == [r["run_id"] for r in every]
        record = await client.get_run(every[0]["run_id"])
        assert record["outputs"] == {"out-0": "y"}
        assert await client.run_metadata("echo", every[0]["run_id"]) == record
        with pytest.raises(APIError) as info:
            await client.get_run("no-such-run")
        assert info.value.status == 404
