"""The stores on both databases: SQLite (embedded default) and PostgreSQL (scale-out).

PostgreSQL must be running on 127.0.0.1:5432 (scripts/test.sh starts it); when it is not,
these tests fail rather than skip."""

from __future__ import annotations

import uuid

import anyio
import asyncpg
import pytest

from flowserve.auth import PRIVATE, PUBLIC, parse_bearer
from flowserve.config import Settings
from flowserve.errors import AuthError, NotFoundError
from flowserve.services import Services

pytestmark = pytest.mark.anyio

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(params=["sqlite", "postgresql"])
async def state(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        dbname = None
    else:
        dbname = f"flowserve_test_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'CREATE DATABASE "{dbname}"')
        await admin.close()
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}"
    app_state = Services.build(Settings(database_url=url))
    await app_state.db.create_schema()
    await app_state.keys.create_org("acme")
    try:
        yield app_state
    finally:
        await app_state.aclose()
        if dbname:
            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
            await admin.close()


ECHO = """
id: echo
inputs: {in-0: {}}
nodes: {llm-0: {type: llm, provider: scripted, prompt: "{in-0}", memory: {window: 2}}}
outputs: {out-0: llm-0}
"""


async def test_keys_are_stored_hashed_and_verified(state):
    key = await state.keys.create_key("acme", PUBLIC, "web", ["https://app.example"])
    key_id, secret = parse_bearer(f"Bearer {key.token}")
    principal = await state.keys.verify(key_id, secret)
    assert principal.org_id == "acme" and principal.kind == PUBLIC
    assert principal.allowed_origins == ("https://app.example",)
    with pytest.raises(AuthError):
        await state.keys.verify(key_id, secret[:-1] + ("x" if secret[-1] != "x" else "y"))
    [info] = await state.keys.list_keys("acme")
    assert info.key_id == key_id and not info.revoked
    await state.keys.revoke(key_id)
    with pytest.raises(AuthError):
        await state.keys.verify(key_id, secret)
    with pytest.raises(NotFoundError):
        await state.keys.create_key("no-such-org", PRIVATE)


async def test_flow_versions(state):
    first, _ = await state.flows.publish("acme", ECHO)
    same, _ = await state.flows.publish("acme", ECHO)
    changed, _ = await state.flows.publish("acme", ECHO.replace("window: 2", "window: 3"))
    assert (first.version, first.created) == (1, True)
    assert (same.version, same.created) == (1, False)
    assert changed.version == 2
    assert (await state.flows.get("acme", "echo")).version == 2
    assert (await state.flows.get("acme", "echo", 1)).flow.nodes["llm-0"].spec.memory.window == 2
    with pytest.raises(NotFoundError):
        await state.flows.get("acme", "echo", 7)
    with pytest.raises(NotFoundError):
        await state.flows.get("other", "echo")
    assert [(f, v) for f, v, _ in await state.flows.store.list("acme")] == [("echo", 2)]


async def test_run_records_and_memory(state):
    from flowserve.auth import Principal

    await state.flows.publish("acme", ECHO.replace("prompt:", 'model: "echo?history=1", prompt:'))
    loaded = await state.flows.get("acme", "echo")
    principal = Principal("acme", "k1", PUBLIC)
    outputs = []
    for text in ("one", "two", "three"):
        async with state.runs.start(principal, loaded, {"in-0": text}, "user-1") as run:
            async for _ in run.events():
                pass
        outputs.append(run.outputs()["out-0"])
    # Each call sees the earlier exchanges (user text, then the answer given).
    assert outputs[0] == "one"
    assert outputs[1] == "one | one | two"
    assert outputs[2] == "one | one | two | one | one | two | three"
    row = await state.runs.store.get("acme", run.id)
    assert row.state == "COMPLETED" and row.user_id == "user-1"
    assert row.inputs == {"in-0": "three"} and row.outputs == {"out-0": outputs[2]}
    with pytest.raises(NotFoundError):
        await state.runs.store.get("other-org", run.id)
    # The window keeps the last two exchanges only.
    history = await state.runs.memory.load("acme", "echo", "llm-0", "user-1", 2)
    assert [m.content for m in history][0::2] == ["two", "three"]
    async with state.runs.start(principal, loaded, {"in-0": "four"}, "user-1") as run:
        async for _ in run.events():
            pass
    assert run.outputs()["out-0"] == f"two | {outputs[1]} | three | {outputs[2]} | four"
    assert await state.runs.memory.load("acme", "echo", "llm-0", "user-2", 2) == []


async def test_concurrent_run_records_are_group_committed(state):
    from flowserve.auth import Principal

    await state.flows.publish("acme", ECHO)
    loaded = await state.flows.get("acme", "echo")
    principal = Principal("acme", "k1", PUBLIC)
    writer = state.runs.store.writer
    before = writer.batches
    run_ids: list[str] = []

    async def one(i: int) -> None:
        async with state.runs.start(principal, loaded, {"in-0": f"run {i}"}) as run:
            async for _ in run.events():
                pass
        run_ids.append(run.id)

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(one, i)
    # 40 runs, two writes each; concurrent writes share transactions.
    assert writer.batches - before < 40
    for run_id in run_ids:
        row = await state.runs.store.get("acme", run_id)
        assert row.state == "COMPLETED" and row.outputs["out-0"].startswith("run ")
        assert row.finished_at is not None and row.owner


async def test_a_short_run_is_written_once_and_a_long_one_is_visible_while_running(state):
    from flowserve.auth import Principal

    await state.flows.publish("acme", ECHO.replace("prompt:", 'model: "echo?delay=0.2", prompt:'))
    loaded = await state.flows.get("acme", "echo")
    principal = Principal("acme", "k1", PUBLIC)
    writer = state.runs.store.writer
    state.runs.record_delay = 0.25

    before = writer.batches
    async with state.runs.start(principal, loaded, {"in-0": "quick"}) as run:
        async for _ in run.events():
            pass
    assert writer.batches - before == 1  # one insert, with the outcome
    assert (await state.runs.store.get("acme", run.id)).state == "COMPLETED"

    async with state.runs.start(principal, loaded, {"in-0": "a b c d"}) as run:
        async for event in run.events():
            if type(event).__name__ == "NodeDelta" and event.text.strip() == "c":
                row = await state.runs.store.get("acme", run.id)
                assert row.state == "RUNNING"  # recorded once it outlived record_delay
    assert (await state.runs.store.get("acme", run.id)).state == "COMPLETED"
