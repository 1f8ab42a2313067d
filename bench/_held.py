"""The relay benchmark's memory phase: thousands of slow streams held open on freshly started
servers, RSS sampled as they open (RSS per open stream)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from typing import Any

from _harness import Bench
from _loadgen import Pool, run_batch
from _procs import memory_kib
from fake_upstream import TOKEN_WIDTH


async def phase_open_streams(bench: Bench) -> None:
    """On fresh server processes (warmed with a few streams), so the RSS delta is the held
    streams' and not memory freed by the earlier phases and reused."""
    for name, key in (("flowserve", "fs-legacy"), ("litellm", "litellm")):
        if name in bench.out["servers"] and key in bench.pids:
            peak = memory_kib(bench.pids[key], "VmHWM") / 1024
            bench.out["servers"][name]["peak_rss_mib"] = peak
    print("\nheld streams: restarting the servers", flush=True)
    bench.flowserve.stop()
    await bench.start_flowserve_once()
    if bench.litellm is not None:
        bench.litellm.stop()
        bench.litellm = None
        await bench.start_litellm(record=False)
    for pool in bench.pools.values():
        pool.close()
    bench.pools = {t.name: Pool(t, TOKEN_WIDTH) for t in bench.targets()}
    bench.fake.control(gap_ms=0)
    for name in ("fs-legacy", "litellm"):
        if name in bench.pools:
            await run_batch(bench.pools[name], 10, 3, 30, time.perf_counter() + 30)
            bench.pools[name].close()
    for name, count in (
        ("fs-legacy", bench.plan["open_streams"]),
        ("litellm", bench.plan["litellm_open_streams"]),
    ):
        if name in bench.pools:
            await _open_streams(bench, name, count)


async def _open_streams(bench: Bench, name: str, count: int, stages: int = 5) -> None:
    """Hold ``count`` slow streams open (first token, then nothing for 60 s), opened in
    ``stages`` equal steps with RSS sampled after each: if the server stops streaming at
    some number (a connection-pool cap), the steps before it show what an *active*
    stream costs and the steps after it what a *waiting* one does."""
    pid = bench.pids[name]
    print(f"\nheld streams: {count} slow streams through {name}", flush=True)
    bench.fake.control(gap_ms=60_000)
    await asyncio.sleep(1.0)
    rss0 = memory_kib(pid)
    pool = Pool(bench.pools[name].target, TOKEN_WIDTH)  # its own connections
    opening = asyncio.Semaphore(500)  # connections being opened at once
    first = sent = 0

    async def one() -> None:
        nonlocal first, sent
        released = False
        await opening.acquire()
        sent += 1

        def on_first(_: Any) -> None:
            nonlocal first, released
            first += 1
            if not released:
                released = True
                opening.release()

        task = asyncio.ensure_future(pool.stream(300, on_first))
        # A stream that gets no first token within a second still lets the next one in.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 1.0)
        if not released:
            released = True
            opening.release()
        await task

    async def until(condition: Any, seconds: float) -> None:
        for _ in range(int(seconds * 20)):
            if condition():
                return
            await asyncio.sleep(0.05)

    started = time.perf_counter()
    tasks: list[asyncio.Future[None]] = []
    steps = []
    per_stage = math.ceil(count / stages)
    for _ in range(stages):
        n = min(per_stage, count - len(tasks))
        tasks += [asyncio.ensure_future(one()) for _ in range(n)]
        opened = len(tasks)
        await until(lambda opened=opened: sent >= opened, 60)
        # First tokens: until all have one, or none came for a while (a cap): 10 s
        # until a cap has been seen, 2 s after; at most 30 s.
        capped = bool(steps) and steps[-1]["first_token"] < steps[-1]["opened"]
        patience = 20 if capped else 100
        last, still = first, 0
        for _ in range(300):
            if first >= opened or still >= patience:
                break
            await asyncio.sleep(0.1)
            still = still + 1 if first == last else 0
            last = first
        await asyncio.sleep(1.0)
        rss = memory_kib(pid)
        steps.append({"opened": len(tasks), "first_token": first, "rss_mib": rss / 1024})
        print(
            f"  {len(tasks):5} opened, {first:5} with a first token: RSS {rss / 1024:.1f} MiB",
            flush=True,
        )
    opened_in = time.perf_counter() - started
    rss1 = memory_kib(pid)
    upstream_active = bench.fake.stats()["active"]
    active = [st for st in steps if st["first_token"] == st["opened"]]
    row = {
        "requested": count,
        "with_first_token": first,
        "seconds_to_open": opened_in,
        "rss_before_mib": rss0 / 1024,
        "rss_open_mib": rss1 / 1024,
        "rss_per_stream_kib": (rss1 - rss0) / count,
        # The largest step at which every stream opened so far was streaming.
        "rss_per_active_stream_kib": (
            (active[-1]["rss_mib"] * 1024 - rss0) / active[-1]["opened"] if active else math.nan
        ),
        "steps": steps,
        "server_fds": len(os.listdir(f"/proc/{pid}/fd")),
        "upstream_streams_active": upstream_active,
        "peak_rss_mib": memory_kib(pid, "VmHWM") / 1024,
    }
    bench.out["open_streams"][name] = row
    print(
        f"  {first}/{count} streams got their first token; upstream sees {upstream_active} "
        f"active; RSS {rss0 / 1024:.1f} → {rss1 / 1024:.1f} MiB = "
        f"{row['rss_per_stream_kib']:.1f} KiB per held stream, "
        f"{row['rss_per_active_stream_kib']:.1f} KiB per streaming one",
        flush=True,
    )
    if first < count:
        bench.note(
            f"{name}: only {first} of {count} held streams got a first token: the upstream "
            f"saw {upstream_active} streams, the rest waited inside the server (a "
            "connection-pool cap towards the upstream)"
        )
    pool.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    released = time.monotonic()
    for _ in range(120):  # up to 60 s for the server to drop its upstream streams
        if not bench.fake.stats()["active"]:
            break
        await asyncio.sleep(0.5)
    row["seconds_to_release"] = time.monotonic() - released
    bench.fake.control(gap_ms=bench.gap_ms)


# -- run -------------------------------------------------------------------------------
