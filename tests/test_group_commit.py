"""Group commit of run records (store/_group_commit.py), on a real SQLite database.

A write that fails for a moment is retried until it lands; one that fails for good is counted
and logged by run id (never with its values), and a bad record does not take its batch with
it. However busy the writer, a submitter waits for at most two batches, and one that is
cancelled while it waits still has its record written."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import anyio
import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from flowserve.errors import NotFoundError
from flowserve.store import sqlite_driver
from flowserve.store.database import Database, utcnow
from flowserve.store.runs import RunStore

pytestmark = pytest.mark.anyio

SECRET = "the user's private words"


@pytest.fixture
async def store(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}")
    await db.create_schema()
    try:
        yield RunStore(db)
    finally:
        await db.aclose()


def record(run_id: str) -> dict:
    return {
        "id": run_id,
        "org_id": "acme",
        "flow_id": "echo",
        "flow_version": 1,
        "key_id": "k1",
        "state": "RUNNING",
        "inputs": {"in-0": SECRET},
        "queued_at": utcnow(),
    }


def locked() -> OperationalError:
    # What SQLAlchemy raises for SQLite's SQLITE_BUSY, parameters (user input) included.
    return OperationalError(
        "INSERT INTO runs", {"inputs": SECRET}, sqlite3.OperationalError("database is locked")
    )


def hold_writes(writer) -> tuple[anyio.Event, anyio.Event]:
    """Make writes wait, once one has begun (``held``), until ``go`` is set."""
    write, held, go = writer._write, anyio.Event(), anyio.Event()

    async def gated(rows):
        held.set()
        await go.wait()
        await write(rows)

    writer._write = gated
    return held, go


async def test_a_write_that_fails_for_a_moment_is_retried_until_it_lands(store):
    writer = store.writer
    write, failures = writer._write, 2

    async def flaky(rows):
        nonlocal failures
        if failures:
            failures -= 1
            raise locked()
        await write(rows)

    writer._write = flaky
    await store.start(record("r1"))
    assert failures == 0
    assert (await store.get("acme", "r1")).state == "RUNNING"
    assert store.failed_writes == 0 and store.last_failure is None and store.healthy(3600)


async def test_a_write_waits_out_a_real_lock_held_by_another_connection(store, tmp_path):
    # No busy wait in SQLite itself, so that the lock fails the write at once.
    event.listen(
        store.db.engine.sync_engine,
        "connect",
        lambda conn, _: conn.cursor().execute("PRAGMA busy_timeout=0"),
    )
    await store.db.engine.dispose()
    # the engine's own SQLite: another copy in this process would not see its locks
    blocker = sqlite_driver.module().connect(tmp_path / "runs.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    writer = store.writer
    write, errors = writer._write, []

    async def observed(rows):
        try:
            await write(rows)
        except OperationalError as exc:
            errors.append(exc)
            blocker.execute("COMMIT")  # the other connection lets go after the first failure
            raise

    writer._write = observed
    try:
        await store.start(record("r2"))
    finally:
        blocker.close()
    assert "locked" in str(errors[0].orig)  # the failure was real, not a stand-in
    assert (await store.get("acme", "r2")).state == "RUNNING"
    assert store.failed_writes == 0 and store.healthy(3600)


async def test_a_record_that_cannot_be_written_is_counted_and_logged_without_values(store, caplog):
    writer = store.writer

    async def broken(rows):
        writer.batches += 1
        raise locked()

    writer._write = broken
    with caplog.at_level(logging.WARNING, logger="flowserve.store"):
        await store.start(record("r3"))  # does not raise: the run goes on
    assert writer.batches == 3  # three attempts
    assert store.failed_writes == 1
    assert store.last_failure_error == "OperationalError"
    assert store.last_failure is not None and not store.healthy(3600)
    lost = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lost) == 1 and "r3" in lost[0]
    assert SECRET not in caplog.text and "database is locked" not in caplog.text
    with pytest.raises(NotFoundError):
        await store.get("acme", "r3")
    writer.last_failure -= 61  # as if a minute had passed
    assert store.healthy(60) and not store.healthy(120)


async def test_a_read_only_database_loses_the_record_visibly(store, tmp_path):
    path = tmp_path / "runs.db"
    read_only = Database(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")
    runs = RunStore(read_only)
    try:
        await runs.start(record("r4"))
    finally:
        await read_only.aclose()
    assert runs.failed_writes == 1 and runs.last_failure_error == "OperationalError"
    assert not runs.healthy(3600)
    with pytest.raises(NotFoundError):
        await store.get("acme", "r4")
    assert store.healthy(3600)  # another store on the same file lost nothing


async def test_one_bad_record_does_not_lose_the_others_in_its_batch(store):
    await store.start(record("dup"))
    held, go = hold_writes(store.writer)
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.start, record("first"))
        await held.wait()  # "first" is being written: the next three queue as one batch
        for run_id in ("good-1", "dup", "good-2"):
            tg.start_soon(store.start, record(run_id))
        await anyio.wait_all_tasks_blocked()
        go.set()
    for run_id in ("first", "good-1", "good-2", "dup"):
        assert (await store.get("acme", run_id)).state == "RUNNING"
    assert store.failed_writes == 1  # the second "dup", a duplicate key


async def test_a_submitter_waits_for_at_most_two_batches_however_busy(store):
    writer = store.writer
    write = writer._write
    waited: dict[str, tuple[int, int]] = {}  # run id: (batch in flight on arrival, on return)

    async def submit(run_id: str, in_flight: int) -> None:
        await store.start(record(run_id))
        waited[run_id] = (in_flight, writer.batches)

    async with anyio.create_task_group() as tg:

        async def busy(rows):
            # Steady load: while each of the first twelve batches is written, two more
            # submitters arrive, so the queue is never empty when a batch ends.
            number = writer.batches + 1  # this batch's
            if number <= 12:
                for i in range(2):
                    tg.start_soon(submit, f"run-{number}-{i}", number)
                await anyio.wait_all_tasks_blocked()  # they have queued
            await write(rows)

        writer._write = busy
        await submit("first", 0)
        assert writer.batches <= 2  # its own, not the batches of all who queued meanwhile
    assert len(waited) == 25
    for run_id, (in_flight, returned) in waited.items():
        # The batch in flight when it arrived, then its own; the next may have begun.
        assert returned <= in_flight + 2, (run_id, in_flight, returned)
        assert (await store.get("acme", run_id)).state == "RUNNING"
    assert writer.batches < len(waited)  # a busy writer still batches
    assert store.failed_writes == 0


async def test_a_submitter_cancelled_while_waiting_still_has_its_record_written(store):
    held, go = hold_writes(store.writer)
    scope = anyio.CancelScope()

    async def impatient() -> None:
        with scope:
            await store.start(record("impatient"))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.start, record("first"))
            await held.wait()
            tg.start_soon(impatient)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()  # while it waits for "first" to be written
            go.set()
        # Written before anyone else submits: not left in the queue for the next batch.
        assert (await store.get("acme", "impatient")).state == "RUNNING"
        await store.start(record("after"))  # the queue still moves
    for run_id in ("first", "after"):
        assert (await store.get("acme", run_id)).state == "RUNNING"
    assert store.failed_writes == 0


async def test_a_task_cancelled_by_asyncio_while_waiting_still_has_its_record_written(store):
    # asyncio's own Task.cancel(), which no cancel scope shields from.
    held, go = hold_writes(store.writer)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.start, record("first"))
            await held.wait()
            task = asyncio.get_running_loop().create_task(store.start(record("impatient")))
            await anyio.wait_all_tasks_blocked()
            task.cancel()
            go.set()
        with pytest.raises(asyncio.CancelledError):
            await task  # cancelled once its record is written
        assert (await store.get("acme", "impatient")).state == "RUNNING"
        await store.start(record("after"))
    for run_id in ("first", "after"):
        assert (await store.get("acme", run_id)).state == "RUNNING"
    assert store.failed_writes == 0
