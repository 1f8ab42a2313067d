"""The Redis backend in-process, two or three "processes" (RedisCluster instances with their
own owner ids) on one Redis: shared limits, slots that expire with their process, messages,
event logs read from another process, and what happens while Redis is down."""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis

from flowserve.cluster import redis as cluster_redis
from flowserve.cluster.base import Invalidation, RunInfo
from flowserve.cluster.redis import LIVENESS, RedisCluster
from flowserve.errors import LimitError, NotFoundError
from flowserve.events import NodeCompleted, NodeDelta, NodeStarted, RunFinished
from tests.cluster_env import PrivateRedis, prefix, private_redis, shared_redis

__all__ = ["prefix", "private_redis", "shared_redis"]  # fixtures

pytestmark = pytest.mark.anyio


class Process:
    """One RedisCluster with what its handlers were given."""

    def __init__(self, url: str, prefix: str, **kwargs: Any) -> None:
        self.cluster = RedisCluster(url, uuid.uuid4().hex, prefix, **kwargs)
        self.stopped: list[tuple[str, str]] = []
        self.invalidated: list[Invalidation] = []
        self.runs: set[str] = set()  # the run ids it "has"

    def on_stop(self, run_id: str, reason: str) -> bool:
        self.stopped.append((run_id, reason))
        return run_id in self.runs

    def info(self, run_id: str | None = None) -> RunInfo:
        run_id = run_id or uuid.uuid4().hex
        return RunInfo(run_id, self.cluster.owner, "acme", "echo", 3, "k1", "u1", {"in-0": "hi"})


@asynccontextmanager
async def running(url: str, prefix: str, **kwargs: Any) -> AsyncIterator[Process]:
    process = Process(url, prefix, **kwargs)
    try:
        async with anyio.create_task_group() as group:
            on_invalidate = process.invalidated.append
            await process.cluster.start(process.on_stop, on_invalidate, group.start_soon)
            try:
                yield process
            finally:
                group.cancel_scope.cancel()
    finally:
        await process.cluster.aclose()


async def until(check: Callable[[], Any], within: float, every: float = 0.005) -> Any:
    """``check()``'s first true value (awaited if it is a coroutine), polled until
    ``within`` seconds: what another process does is seen only by looking again."""
    with anyio.fail_after(within):
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await anyio.sleep(every)


async def admitted(process: Process, key_id: str, per_key: int, total: int) -> Any:
    """A slot for ``key_id``, or None if refused."""
    decided = await process.cluster.admit(key_id, 0, per_key, total, True)
    return decided if decided[0] == "ok" else None


async def test_a_run_log_is_found_and_read_from_another_process(shared_redis: str, prefix: str):
    async with (
        running(shared_redis, prefix, retention=1.0) as a,
        running(shared_redis, prefix) as b,
    ):
        info = a.info()
        log = a.cluster.open_log(info)
        assert await a.cluster.lookup(info.run_id) == info  # at once, in its own process
        # ... and in the other as soon as the writer has run: before any event or record
        assert await until(lambda: b.cluster.lookup(info.run_id), 1) == info
        assert await b.cluster.read(info.run_id, 0, 0) == ([], False)
        log.append([NodeStarted("llm-0"), NodeDelta("llm-0", "Hel")])
        log.append([NodeDelta("llm-0", "lo")])
        events, closed = await b.cluster.read(info.run_id, 0, wait=1.0)
        assert events == [
            (1, NodeStarted("llm-0")),
            (2, NodeDelta("llm-0", "Hel")),
            (3, NodeDelta("llm-0", "lo")),
        ]
        assert not closed

        async def finish() -> None:
            await anyio.sleep(0.3)
            log.append([NodeCompleted("llm-0", "Hello", {"prompt": 1, "completion": 2})])
            log.append([RunFinished("COMPLETED", usage={"llm-0": {"completion": 2}})])
            await log.close()

        async with anyio.create_task_group() as group:
            group.start_soon(finish)
            started = time.monotonic()
            events, closed = await b.cluster.read(info.run_id, 3, wait=2.0)  # waits for them
            waited = time.monotonic() - started
        assert 0.2 < waited < 1.5
        assert [seq for seq, _ in events] == [4, 5] and closed
        assert events[1][1] == RunFinished("COMPLETED", usage={"llm-0": {"completion": 2}})
        assert await b.cluster.read(info.run_id, 5, wait=1.0) == ([], True)  # at once
        log.append([NodeDelta("llm-0", "late")])  # after close: not kept
        # kept for the retention time after the end, then gone
        assert await b.cluster.lookup(info.run_id) == info
        await anyio.sleep(1.3)
        assert await b.cluster.lookup(info.run_id) is None
        with pytest.raises(NotFoundError):
            await b.cluster.read(info.run_id, 0, wait=0.5)
        assert a.cluster.write_failures == 0


async def test_a_log_is_capped_and_every_loop_turn_is_one_write(private_redis: PrivateRedis):
    url = private_redis.url
    async with running(url, "cap", max_events=100) as a, running(url, "cap") as b:
        info = a.info()
        log = a.cluster.open_log(info)
        client = redis.Redis.from_url(url)
        try:
            await anyio.sleep(0.1)  # the log registered, the heartbeat's scripts loaded
            client.config_resetstat()
            for i in range(1000):  # one loop turn, one append per token
                log.append([NodeDelta("llm-0", f"t{i} ")])

            async def last_one_in() -> bool:
                return (await b.cluster.read(info.run_id, 999, 0))[0] != []

            await until(last_one_in, 2)
            stats = client.info("commandstats")
            assert stats["cmdstat_evalsha"]["calls"] == 1  # the 1000 events, one script call
            length = client.xlen(f"cap:events:{info.run_id}")
            assert 100 <= length < 400  # trimmed to about max_events (whole nodes)
        finally:
            client.close()
        events, _ = await b.cluster.read(info.run_id, 0, 0)
        assert events[-1] == (1000, NodeDelta("llm-0", "t999 "))
        assert events[0][0] > 1  # the oldest were trimmed: a reader sees where its gap is
        await log.close()


async def test_limits_are_counted_once_for_all_processes(shared_redis: str, prefix: str):
    async with running(shared_redis, prefix) as a, running(shared_redis, prefix) as b:
        verdicts = []
        for i in range(8):  # 4 a minute, over both processes
            cluster = (a if i % 2 else b).cluster
            assert cluster.admit_now("k-rate", 4, 0, 0, False) is None  # Redis decides
            verdicts.append((await cluster.admit("k-rate", 4, 0, 0, False))[0])
        assert verdicts == ["ok"] * 4 + ["rate"] * 4
        verdict, wait, _ = await a.cluster.admit("k-rate", 4, 0, 0, False)
        assert verdict == "rate" and 10 < wait <= 15  # a token every 15 s

        # two slots per key, three in all, over both processes
        s1 = await a.cluster.admit("k1", 0, 2, 3, True)
        s2 = await b.cluster.admit("k1", 0, 2, 3, True)
        assert s1[0] == s2[0] == "ok" and s1[2] != s2[2]
        assert await a.cluster.admit("k1", 0, 2, 3, True) == ("key", 1.0, "")
        s3 = await b.cluster.admit("k2", 0, 2, 3, True)
        assert s3[0] == "ok"
        assert await a.cluster.admit("k3", 0, 2, 3, True) == ("total", 1.0, "")
        a.cluster.release("k1", s1[2])  # sent in the background
        again = await until(lambda: admitted(b, "k1", 2, 3), 1)
        for cluster, key, slot in ((b, "k1", s2[2]), (b, "k2", s3[2]), (b, "k1", again[2])):
            cluster.cluster.release(key, slot)
        # a refused slot still counted against the rate, as one request
        assert (await a.cluster.admit("k4", 2, 0, 3, True))[0] == "key"
        assert (await a.cluster.admit("k4", 2, 1, 3, True))[0] == "ok"
        assert (await a.cluster.admit("k4", 2, 1, 3, True))[0] == "rate"


async def test_the_slots_of_a_dead_process_expire_and_a_live_ones_do_not(
    shared_redis: str, prefix: str
):
    async with running(shared_redis, prefix) as alive:
        dead = Process(shared_redis, prefix)
        async with anyio.create_task_group() as group:
            await dead.cluster.start(dead.on_stop, dead.invalidated.append, group.start_soon)
            assert (await dead.cluster.admit("k1", 0, 2, 10, True))[0] == "ok"
            kept = await alive.cluster.admit("k1", 0, 2, 10, True)
            assert kept[0] == "ok"
            group.cancel_scope.cancel()  # killed: no more heartbeats, nothing given back
        await dead.cluster.link.aclose()
        assert await alive.cluster.owner_alive(dead.cluster.owner)
        assert (await alive.cluster.admit("k1", 0, 2, 10, True))[0] == "key"
        started = time.monotonic()
        taken = await until(lambda: admitted(alive, "k1", 2, 10), LIVENESS + 3, every=0.1)
        assert time.monotonic() - started > LIVENESS - 2  # its slot expired, not before
        assert not await alive.cluster.owner_alive(dead.cluster.owner)
        # the live process's own slot stayed counted all along: the key is full again
        assert (await alive.cluster.admit("k1", 0, 2, 10, True))[0] == "key"
        alive.cluster.release("k1", kept[2])
        alive.cluster.release("k1", taken[2])


async def test_stops_and_invalidations_reach_the_other_process(shared_redis: str, prefix: str):
    async with running(shared_redis, prefix) as a, running(shared_redis, prefix) as b:
        info = a.info()
        a.runs.add(info.run_id)
        await anyio.sleep(0.1)  # subscribed
        started = time.monotonic()
        assert await b.cluster.stop(info, "run stopped")  # a listens on its channel
        await until(lambda: a.stopped, 1, every=0.001)
        print(f"\nstop delivered in {(time.monotonic() - started) * 1000:.1f} ms")
        assert a.stopped == [(info.run_id, "run stopped")] and b.stopped == []
        # its own run: the handler's answer; a gone owner: nobody took it
        assert await a.cluster.stop(info, "x") and a.stopped[-1] == (info.run_id, "x")
        ghost = RunInfo(info.run_id, uuid.uuid4().hex, "acme", "echo", 1, None, None, {})
        assert not await b.cluster.stop(ghost, "x")

        a.invalidated.clear()
        b.invalidated.clear()
        await b.cluster.invalidate(Invalidation(key_id="k1"))
        await a.cluster.invalidate(Invalidation(org_id="acme", flow_id="echo"))
        await until(lambda: len(a.invalidated) >= 3 and len(b.invalidated) >= 3, 1)
        assert Invalidation(key_id="k1") in a.invalidated
        assert Invalidation(org_id="acme", flow_id="echo") in b.invalidated

        # a follower elsewhere keeps a run watched for as long as it says
        assert not await a.cluster.watched(info.run_id)
        await b.cluster.watch(info.run_id, 0.5)
        assert await a.cluster.watched(info.run_id)
        await anyio.sleep(0.7)
        assert not await a.cluster.watched(info.run_id)

    async with running(shared_redis, prefix) as c:
        assert not await c.cluster.owner_alive(a.cluster.owner)  # gone with its aclose
        assert await c.cluster.owner_alive(c.cluster.owner)


async def test_while_redis_is_down_nothing_waits_on_it_and_all_comes_back(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(cluster_redis, "RECONNECT", 0.1)
    caplog.set_level(logging.WARNING, logger="flowserve.cluster")
    async with running(private_redis.url, "down") as a:
        held = await a.cluster.admit("k1", 0, 5, 10, True)
        info = a.info()
        log = a.cluster.open_log(info)
        log.append([NodeStarted("llm-0")])
        await anyio.sleep(0.1)
        assert a.cluster.status() == {"backend": "redis", "state": "ok"}

        private_redis.stop()
        log.append([NodeDelta("llm-0", "x")])  # the writer finds Redis gone
        await until(lambda: a.cluster.status()["state"] == "unreachable", 3)
        started = time.monotonic()
        decided = [a.cluster.admit_now("k1", 100, 5, 10, True) for _ in range(4)]
        assert time.monotonic() - started < 0.01  # decided here, at once
        # per process now: its slot from before counts, its own limit of 5 per key
        assert [d[0] for d in decided if d] == ["ok"] * 4
        assert a.cluster.admit_now("k1", 100, 5, 10, True) == ("key", 1.0, "")
        for _ in range(50):
            log.append([NodeDelta("llm-0", "y")])
            await anyio.lowlevel.checkpoint()
        await until(lambda: a.cluster.write_failures >= 51, 1)
        with pytest.raises(LimitError) as refused:
            await a.cluster.lookup(uuid.uuid4().hex)
        assert refused.value.status == 503
        assert not await a.cluster.watched(info.run_id)
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1  # once per outage, not per request
        assert "127.0.0.1" in warnings[0].getMessage()

        a.invalidated.clear()
        private_redis.start()  # empty: it kept nothing
        await until(
            lambda: a.cluster.status()["state"] == "ok" and Invalidation() in a.invalidated, 5
        )
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        # this process's slots (taken before and during the outage) and its open run are
        # back in Redis: counted for everyone again
        client = redis.Redis.from_url(private_redis.url)
        try:
            assert client.zcard("down:slots") == 5
            assert client.exists(f"down:run:{info.run_id}")
        finally:
            client.close()
        assert a.cluster.admit_now("k1", 100, 5, 10, True) is None
        assert await a.cluster.admit("k1", 100, 5, 10, True) == ("key", 1.0, "")
        a.cluster.release("k1", held[2])
        for d in decided:
            assert d is not None
            a.cluster.release("k1", d[2])
        log.append([RunFinished("COMPLETED")])
        await log.close()
        events, closed = await a.cluster.read(info.run_id, 0, 0)
        assert closed and events[-1][1] == RunFinished("COMPLETED")  # the end got through
