"""The Python client against a real server."""

from __future__ import annotations

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
