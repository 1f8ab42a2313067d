"""A run's lifecycle (flowserve.runs.run): each transition, and the ones that race.

Driven through RunService with the real runner and the scripted provider, or with a runner
whose events the test sends itself where the race needs exact timing. The store records
every write, so what the records would hold is what is asserted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from flowserve.auth import PUBLIC, Principal
from flowserve.events import Event, NodeDelta, NodeStarted, RunFinished
from flowserve.flows.graph import Flow
from flowserve.flows.service import LoadedFlow
from flowserve.providers.resilience import RetryPolicy
from flowserve.runs._channel import Channel
from flowserve.runs.run import QUEUED, SHUTDOWN
from flowserve.runs.runner import Runner
from flowserve.runs.service import RunService
from tests.helpers import flow, registry

pytestmark = pytest.mark.anyio

WHO = Principal(org_id="acme", key_id="k1", kind=PUBLIC)


class RecordingStore:
    """RunStore's two writes, kept in order."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []
        self.rows: dict[str, dict[str, Any]] = {}

    async def start(self, values: dict[str, Any]) -> None:
        await anyio.lowlevel.checkpoint()  # a write takes a loop turn at least
        self.writes.append(("insert", values["state"]))
        self.rows[values["id"]] = dict(values)

    async def finish(self, run_id: str, **fields: Any) -> None:
        await anyio.lowlevel.checkpoint()
        self.writes.append(("update", fields["state"]))
        self.rows[run_id].update(fields)


class HandRunner:
    """A runner whose events the test sends: ``channel`` is the run's event stream. When
    its block is left it sends ``on_cancel`` (what a node may still say as it is cut)."""

    def __init__(self) -> None:
        self.channel: Channel[Event] = Channel()
        self.started = 0
        self.on_cancel: list[Event] = []

    @asynccontextmanager
    async def start(
        self, flow: Flow, inputs: Mapping[str, str], memory: Any = None
    ) -> AsyncIterator[Channel[Event]]:
        self.started += 1
        try:
            yield self.channel
        finally:
            for event in self.on_cancel:
                self.channel.send_nowait(event)
            self.channel.close()


ECHO = """
    id: echo
    inputs: {in-0: {}}
    nodes:
      llm: {type: llm, provider: scripted, model: "echo?delay=0.02", prompt: "{in-0}"}
    outputs: {out-0: llm}
"""


def service(runner: Any = None, record_delay: float = 0.0) -> tuple[RunService, RecordingStore]:
    store = RecordingStore()
    runner = runner or Runner(registry(), RetryPolicy(max_retries=0))
    runs = RunService(store, None, runner, owner="me", record_delay=record_delay)  # type: ignore[arg-type]
    return runs, store


def loaded(text: str = ECHO) -> LoadedFlow:
    return LoadedFlow("acme", 1, flow(text))


async def test_a_run_goes_queued_running_completed_and_is_written_once() -> None:
    runs, store = service(record_delay=5.0)
    run = runs.create(WHO, loaded(), {"in-0": "a b c"})
    assert run.state == QUEUED and run.id not in runs.active
    states = []
    async with run.session():
        assert runs.active[run.id] is run
        async for _ in run.events():
            states.append(run.state)
    assert states[0] == "RUNNING" and run.state == "COMPLETED"
    assert run.outputs() == {"out-0": "a b c"}
    assert store.writes == [("insert", "COMPLETED")]  # shorter than the delay: one write
    assert store.rows[run.id]["outputs"] == {"out-0": "a b c"}
    assert store.rows[run.id]["usage"] == {"llm": {"prompt_tokens": 3, "completion_tokens": 3}}
    assert run.id not in runs.active
    assert runs.metrics.finished == {"COMPLETED": 1}
    assert runs.metrics.tokens[("scripted", "completion_tokens")] == 3


async def test_a_run_longer_than_the_delay_is_recorded_running_then_its_outcome() -> None:
    runs, store = service(record_delay=0.01)
    async with runs.start(WHO, loaded(), {"in-0": "a b c d e"}) as run:
        async for _ in run.events():
            pass
    assert store.writes == [("insert", "RUNNING"), ("update", "COMPLETED")]
    assert store.rows[run.id]["state"] == "COMPLETED"


async def test_stop_before_it_begins_runs_nothing_and_records_the_reason() -> None:
    hand = HandRunner()
    runs, store = service(hand)
    run = runs.create(WHO, loaded(), {"in-0": "x"})
    assert run.stop("not wanted") is True
    assert run.stop("again") is False  # the first stop's reason stays
    async with run.session():
        seen = [event async for event in run.events()]
    assert seen == [] and hand.started == 0
    assert run.state == "CANCELLED" and run.final is not None
    assert (run.final.error, run.final.error_type) == ("not wanted", "cancelled")
    row = store.rows[run.id]
    assert store.writes == [("insert", "CANCELLED")]
    assert (row["error"], row["started_at"]) == ("not wanted", None)


async def test_stop_during_set_up_cancels_before_any_token() -> None:
    runs, store = service()
    async with runs.start(WHO, loaded(), {"in-0": "a b c"}) as run:
        assert run.state == "RUNNING"
        runs.stop(run.id, "changed my mind")  # before the run had a loop turn
        seen = []
        async for event in run.events():  # cancelled at its first wait
            seen.append(event)
    assert not [e for e in seen if isinstance(e, NodeDelta)]  # at most its first step
    assert run.state == "CANCELLED" and run.outputs() == {"out-0": ""}
    assert store.writes == [("insert", "CANCELLED")]
    assert store.rows[run.id]["error"] == "changed my mind"


async def test_a_run_that_slips_in_after_the_drain_is_stopped_at_once() -> None:
    hand = HandRunner()
    runs, store = service(hand)
    runs.closed = True
    async with runs.start(WHO, loaded(), {"in-0": "x"}) as run:
        pass
    assert hand.started == 0
    assert run.final is not None and (run.final.error, run.final.error_type) == SHUTDOWN
    assert store.writes == [("insert", "CANCELLED")]


async def test_client_gone_during_the_record_delay_writes_one_cancelled_record() -> None:
    runs, store = service(record_delay=0.2)
    async with runs.start(WHO, loaded(), {"in-0": "a b c d e f g h"}) as run:
        async for event in run.events():
            if isinstance(event, NodeDelta):
                break  # the client leaves after its first token
    await anyio.sleep(0.3)  # past the delay: the RUNNING write must not come late
    assert store.writes == [("insert", "CANCELLED")]
    row = store.rows[run.id]
    assert row["error_type"] == "cancelled"
    # What the runner made before it was cut is kept, whether the consumer read it or not.
    assert row["outputs"]["out-0"].startswith("a")
    assert "llm" in row["usage"]  # the cut node's usage (the scripted provider counts at its end)


async def test_a_stop_mid_stream_keeps_the_partial_output_and_usage() -> None:
    runs, store = service(record_delay=0.0)
    async with runs.start(WHO, loaded(), {"in-0": "a b c d e f g h"}) as run:
        async for event in run.events():
            if isinstance(event, NodeDelta) and event.text.strip() == "b":
                assert runs.stop(run.id, "enough")
    assert run.state == "CANCELLED"
    assert store.writes == [("insert", "RUNNING"), ("update", "CANCELLED")]
    row = store.rows[run.id]
    assert row["error"] == "enough" and row["outputs"]["out-0"].startswith("a b")
    assert row["outputs"]["out-0"] != "a b c d e f g h"
    assert "llm" in row["usage"]
    assert runs.stop(run.id) is False  # ended: nothing to stop


async def test_failure_during_cancel_leaves_the_stop_in_charge() -> None:
    hand = HandRunner()
    runs, store = service(hand)
    usage = {"llm": {"prompt_tokens": 1, "completion_tokens": 4}}
    # As it is cut, the node fails and the runner reports that, with its usage.
    hand.on_cancel = [RunFinished("FAILED", "upstream broke", "upstream_error", "llm", usage)]
    async with runs.start(WHO, loaded(), {"in-0": "x"}) as run:
        hand.channel.send_nowait(NodeStarted("llm"))
        hand.channel.send_nowait(NodeDelta("llm", "par"))
        async for _ in run.events():
            run.stop("user stop")
    assert run.state == "CANCELLED"
    assert run.final is not None and run.final.error == "user stop"
    row = store.rows[run.id]
    assert (row["state"], row["error"], row["error_node"]) == ("CANCELLED", "user stop", None)
    assert row["usage"] == usage and row["outputs"] == {"out-0": "par"}
    assert runs.metrics.finished == {"CANCELLED": 1}


async def test_a_failure_that_came_first_is_not_overwritten_by_a_late_stop() -> None:
    hand = HandRunner()
    runs, store = service(hand)
    async with runs.start(WHO, loaded(), {"in-0": "x"}) as run:
        hand.channel.send_nowait(RunFinished("FAILED", "boom", "upstream_error", "llm"))
        hand.channel.close()
        async for _ in run.events():
            pass
        assert run.stop("too late") is False
    assert run.state == "FAILED"
    assert (store.rows[run.id]["state"], store.rows[run.id]["error"]) == ("FAILED", "boom")


async def test_stop_waits_for_the_record() -> None:
    runs, store = service()
    recorded: list[bool] = []

    async def stopper(run_id: str) -> None:
        await anyio.sleep(0.05)  # two tokens in
        run = runs.active[run_id]
        assert runs.stop(run_id, "stop")
        await run.wait_recorded()
        recorded.append(run_id in store.rows and store.rows[run_id]["state"] == "CANCELLED")

    run = runs.create(WHO, loaded(), {"in-0": "a b c d e f g h i j"})
    async with anyio.create_task_group() as group:
        group.start_soon(stopper, run.id)
        async with run.session():
            async for _ in run.events():
                pass
    assert recorded == [True]
