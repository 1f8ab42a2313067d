"""Telling interrupted runs from runs still going in another process, on SQLite and on a
PostgreSQL database shared by several processes (flowserve.store.instances)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import timedelta

import anyio
import asyncpg
import pytest
from sqlalchemy import select, update

from flowserve.store.database import Database, utcnow
from flowserve.store.instances import Identity, InstanceStore
from flowserve.store.models import Instance, Run
from flowserve.store.runs import RunStore

pytestmark = pytest.mark.anyio

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request, tmp_path):
    dbname = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    else:
        dbname = f"flowserve_test_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'CREATE DATABASE "{dbname}"')
        await admin.close()
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}"
    database = Database(url)
    await database.create_schema()
    try:
        yield database
    finally:
        await database.aclose()
        if dbname:
            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
            await admin.close()


def other_host() -> Identity:
    """A process on another machine: only its heartbeat tells whether it lives."""
    return replace(Identity.current(), id=uuid.uuid4().hex, hostname="other", node="elsewhere")


def dead_local_process() -> Identity:
    """A process of this machine that has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = int(child.stdout)
    return replace(Identity.current(), id=uuid.uuid4().hex, pid=pid, pid_started="1")


async def start_run(db: Database, owner: str | None) -> str:
    run_id = uuid.uuid4().hex
    now = utcnow()
    await RunStore(db).start(
        {
            "id": run_id,
            "org_id": "acme",
            "flow_id": "f",
            "flow_version": 1,
            "key_id": "k",
            "state": "RUNNING",
            "inputs": {},
            "outputs": {"out-0": "partial"},
            "usage": {},
            "owner": owner,
            "queued_at": now,
            "started_at": now,
        }
    )
    return run_id


async def state_of(db: Database, run_id: str) -> tuple[str, str | None]:
    async with db.session() as s:
        row = await s.get(Run, run_id)
    return row.state, row.error


async def test_runs_of_live_instances_are_left_alone(db):
    here = InstanceStore(db)
    there = InstanceStore(db, me=other_host())
    await here.register()
    await there.register()
    mine, theirs = await start_run(db, here.id), await start_run(db, there.id)
    assert await InstanceStore(db).sweep() == 0  # a third process starting
    assert await here.sweep() == 0 and await there.sweep() == 0
    assert await state_of(db, mine) == ("RUNNING", None)
    assert await state_of(db, theirs) == ("RUNNING", None)


async def test_a_peer_that_stopped_heartbeating_has_its_runs_failed(db):
    here = InstanceStore(db, interval=10)
    there = InstanceStore(db, me=other_host())
    await here.register()
    await there.register()
    theirs = await start_run(db, there.id)
    async with db.session() as s:  # 31 s without a heartbeat: 3 intervals missed
        await s.execute(
            update(Instance)
            .where(Instance.id == there.id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=31))
        )
    assert await here.sweep() == 1
    assert await state_of(db, theirs) == ("FAILED", "interrupted")
    async with db.session() as s:
        assert (await s.execute(select(Instance.id))).scalars().all() == [here.id]
    # The peer was only stalled: its next heartbeat registers it again.
    await there.beat()
    async with db.session() as s:
        assert set((await s.execute(select(Instance.id))).scalars().all()) == {here.id, there.id}


async def test_a_dead_process_on_this_machine_is_known_dead_at_once(db):
    crashed = InstanceStore(db, me=dead_local_process())
    await crashed.register()
    orphan = await start_run(db, crashed.id)
    restarted = InstanceStore(db)
    await restarted.register()
    assert await restarted.sweep() == 1  # its heartbeat is fresh, but its process is gone
    assert await state_of(db, orphan) == ("FAILED", "interrupted")


async def test_runs_without_a_known_owner_are_orphans(db):
    legacy = await start_run(db, None)  # recorded before runs had an owner
    vanished = await start_run(db, "f" * 32)  # its owner's row is gone
    done = await start_run(db, "e" * 32)
    await RunStore(db).finish(done, state="COMPLETED")
    assert await InstanceStore(db).sweep() == 2
    assert await state_of(db, legacy) == ("FAILED", "interrupted")
    assert await state_of(db, vanished) == ("FAILED", "interrupted")
    assert await state_of(db, done) == ("COMPLETED", None)


async def test_alive_registers_and_cancels_its_leftovers_on_exit(db):
    store = InstanceStore(db, interval=0.05)
    async with store.alive("server shutting down", "shutdown"):
        left = await start_run(db, store.id)
        async with db.session() as s:
            first = (await s.get(Instance, store.id)).heartbeat_at
        await anyio.sleep(0.2)
        async with db.session() as s:
            assert (await s.get(Instance, store.id)).heartbeat_at > first
    assert await state_of(db, left) == ("CANCELLED", "server shutting down")
    async with db.session() as s:
        assert (await s.execute(select(Instance))).scalars().all() == []


async def test_an_error_inside_alive_comes_out_as_raised(db):
    with pytest.raises(KeyError, match="boom"):
        async with InstanceStore(db).alive():
            raise KeyError("boom")
    async with db.session() as s:
        assert (await s.execute(select(Instance))).scalars().all() == []
