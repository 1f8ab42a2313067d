"""The relay benchmark's measuring phases under load: time to first token at c=1, paced streams
at c = 1 … 1000, saturation, coalescing on and off, and the py-spy profile. Each takes the
harness (bench/_harness.py) and writes its results into ``bench.out``."""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from typing import Any

import _profile
from _harness import FS_TARGETS, HERE, RESULTS, Bench, flowserve_probe
from _loadgen import Pool, Target, run_batch
from _procs import cpu_seconds, memory_kib
from _report import summarise
from _servers import Flowserve
from fake_upstream import TOKEN_WIDTH, expected_text


async def phase_ttft(bench: Bench) -> None:
    """TTFT at c=1 on short paced responses: the first token arrives on its own, as from a
    real model, so TTFT is not the time to relay a whole burst."""
    rounds, tokens = bench.plan["ttft_rounds"], 3
    print(
        f"\nTTFT at c=1: {rounds} interleaved rounds of {tokens}-token responses "
        f"{bench.gap_ms:g} ms apart",
        flush=True,
    )
    bench.fake.control(gap_ms=bench.gap_ms, tokens=tokens)
    try:
        bench.out["ttft_c1"] = await bench.interleaved(
            bench.runners(sdk=True), rounds, 1, 30, 60, 0.02, expected_text(tokens)
        )
    finally:
        bench.fake.control(tokens=bench.tokens)
    for name, row in bench.out["ttft_c1"].items():
        t = row["ttft_ms"]
        print(f"  {name:12} p50 {t['p50']:7.2f} ms  p99 {t['p99']:7.2f} ms", flush=True)


async def phase_paced(bench: Bench) -> None:
    bench.fake.control(gap_ms=bench.gap_ms)
    for concurrency, rounds in bench.plan["paced"].items():
        print(
            f"\npaced: c={concurrency}, {bench.tokens} tokens {bench.gap_ms:g} ms apart, "
            f"{rounds} round(s)",
            flush=True,
        )
        names = bench.runners(sdk=concurrency <= 10)
        cpu0 = {n: cpu_seconds(p) for n, p in bench.pids.items()}
        settle = 0.1 if concurrency < 100 else 1.0
        rows = await bench.interleaved(names, rounds, concurrency, 120, 90, settle)
        cpu = {n: cpu_seconds(p) - cpu0[n] for n, p in bench.pids.items()}
        bench.out["paced"][str(concurrency)] = rows
        offered = concurrency * 1000 / bench.gap_ms
        direct = rows["direct"]["tokens_per_s"]
        if direct < 0.8 * offered:
            bench.note(
                f"c={concurrency}: the offered load ({offered:,.0f} tokens/s) is more than the "
                f"direct client and fake upstream deliver on this machine ({direct:,.0f}): "
                "the direct baseline is itself saturated, so 'added' figures at this "
                "concurrency understate the relay's cost (they can go negative)"
            )
        bench.out["paced"][str(concurrency) + "_server_cpu_s"] = cpu
        for name, row in rows.items():
            t, d = row["ttft_ms"], row["token_delay_ms"]
            print(
                f"  {name:12} ok {row['completed']:4}/{row['streams']:<4} "
                f"TTFT p50 {t['p50']:8.2f} p99 {t['p99']:8.2f} ms | token delay "
                f"p50 {d['p50']:8.2f} p99 {d['p99']:8.2f} ms | "
                f"{row['tokens_per_s']:8.0f} tok/s",
                flush=True,
            )
            if row["errors"]:
                print(f"      errors: {row['errors']}", flush=True)


SATURATION_C = 100  # closed-loop workers in the saturation and coalescing phases


def _tally() -> dict[str, Any]:
    return {"results": [], "wall": 0.0, "cpu": 0.0, "fake_cpu": 0.0, "client_cpu": 0.0}


async def _saturate(
    bench: Bench, pool: Pool, pid: int, seconds: float, into: dict[str, Any]
) -> None:
    """One closed-loop slice on ``pool``; adds its results, wall time and CPU (the server
    ``pid``, the fake upstream, this client) to ``into``."""
    cpu0, fake0 = cpu_seconds(pid), cpu_seconds(bench.fake.pid)
    client0 = sum(os.times()[:2])
    got, wall = await run_batch(pool, SATURATION_C, 1_000_000, 60, time.perf_counter() + seconds)
    into["results"] += got
    into["wall"] += wall
    into["cpu"] += cpu_seconds(pid) - cpu0
    into["fake_cpu"] += cpu_seconds(bench.fake.pid) - fake0
    into["client_cpu"] += sum(os.times()[:2]) - client0


async def phase_saturation(bench: Bench) -> None:
    slices, seconds = bench.plan["sat_slices"], bench.plan["sat_seconds"]
    print(
        f"\nsaturation: gap 0, closed loop c={SATURATION_C}, {slices} x {seconds:g} s "
        "per target, interleaved",
        flush=True,
    )
    bench.fake.control(gap_ms=0)
    acc = {name: _tally() for name in bench.pools}
    for _ in range(slices):
        for name, pool in bench.pools.items():
            await _saturate(bench, pool, bench.pids[name], seconds, acc[name])
    for name, a in acc.items():
        row = summarise(a["results"], bench.expected, 0.0, a["wall"])
        tokens = row["completed"] * bench.tokens
        per_k = 1000 / tokens if tokens else math.nan
        row.update(
            concurrency=SATURATION_C,
            server_cpu_s=a["cpu"],
            server_cpu_s_per_1k_tokens=a["cpu"] * per_k,
            server_cpu_util=a["cpu"] / a["wall"],
            upstream_cpu_s_per_1k_tokens=a["fake_cpu"] * per_k,
            client_cpu_util=a["client_cpu"] / a["wall"],
            client="lean raw-HTTP client, 1 process",
            peak_rss_mib=memory_kib(bench.pids[name], "VmHWM") / 1024,
        )
        bench.out["saturation"][name] = row
        print(
            f"  {name:12} {row['streams_per_s']:8.1f} streams/s {row['tokens_per_s']:9.0f} "
            f"tok/s | server CPU {row['server_cpu_s_per_1k_tokens']:.3f} s/1k tok "
            f"({100 * row['server_cpu_util']:.0f}% of a core) | client CPU "
            f"{100 * row['client_cpu_util']:.0f}% | errors {row['errors'] or 0}",
            flush=True,
        )


async def phase_coalescing(bench: Bench) -> None:
    """What adaptive coalescing saves: the saturation load on flowserve as it runs and on
    a second flowserve with ``FLOWSERVE_STREAM_COALESCE=false`` (every event its own
    frame), interleaved slice by slice."""
    slices, seconds = bench.plan["coalesce_slices"], bench.plan["sat_seconds"]
    print(
        f"\ncoalescing: saturation on flowserve with coalescing on and off, "
        f"{slices} x {seconds:g} s each, interleaved",
        flush=True,
    )
    off = Flowserve(bench.workdir / "no-coalesce", bench.fake.v1)
    off.workdir.mkdir(exist_ok=True)
    await asyncio.to_thread(off.prepare)  # asyncio.run inside: not on this loop
    started = off.start({"FLOWSERVE_STREAM_COALESCE": "false"})
    pools: dict[str, tuple[Pool, int]] = {}
    try:
        auth = {"authorization": f"Bearer {off.public_key}"}
        await bench.first_served(flowserve_probe(off), started, off.process)
        for route in FS_TARGETS:
            on = bench.pools[route].target
            pools[f"{route} on"] = (bench.pools[route], bench.flowserve.pid)
            twin = Target(on.name, off.port, on.path, on.body, on.kind, auth)
            pools[f"{route} off"] = (Pool(twin, TOKEN_WIDTH), off.pid)
        bench.fake.control(gap_ms=0)
        for _, (pool, _) in pools.items():  # warm both
            await run_batch(pool, 10, 3, 30, time.perf_counter() + 30)
        acc = {name: _tally() for name in pools}
        for _ in range(slices):
            for name, (pool, pid) in pools.items():
                await _saturate(bench, pool, pid, seconds, acc[name])
    finally:
        for name, (pool, _) in pools.items():
            if name.endswith(" off"):
                pool.close()
        off.stop()
    for name, a in acc.items():
        row = summarise(a["results"], bench.expected, 0.0, a["wall"])
        ok = [r for r in a["results"] if r.error is None and r.text == bench.expected]
        tokens = row["completed"] * bench.tokens
        row.update(
            server_cpu_s_per_1k_tokens=a["cpu"] * 1000 / tokens if tokens else math.nan,
            messages_per_stream=statistics.mean(r.messages for r in ok) if ok else math.nan,
            body_kib_per_stream=statistics.mean(r.body_bytes for r in ok) / 1024
            if ok
            else math.nan,
        )
        bench.out["coalescing"][name] = row
        print(
            f"  {name:14} {row['streams_per_s']:8.1f} streams/s {row['tokens_per_s']:9.0f} "
            f"tok/s | server CPU {row['server_cpu_s_per_1k_tokens']:.3f} s/1k tok | "
            f"{row['messages_per_stream']:.1f} messages, "
            f"{row['body_kib_per_stream']:.1f} KiB per stream | errors {row['errors'] or 0}",
            flush=True,
        )


async def phase_profile(bench: Bench) -> None:
    seconds = bench.plan["profile_seconds"]
    if _profile.py_spy() is None:
        bench.note("py-spy is not installed in this venv: no profile (pip install py-spy)")
        return
    bench.fake.control(gap_ms=0)
    for name, fmt in (("fs-legacy", "speedscope"), ("fs-v0", "speedscope")):
        suffix = name.removeprefix("fs-")
        path = RESULTS / f"profile-{suffix}.speedscope.json"
        print(f"\nprofile: py-spy on flowserve, {name} at saturation, {seconds} s", flush=True)
        spy = _profile.start(
            bench.flowserve.pid, seconds, path, fmt, bench.workdir / f"py-spy-{suffix}.log"
        )
        await asyncio.sleep(0.5)  # let py-spy attach
        await run_batch(bench.pools[name], 100, 1_000_000, 60, time.perf_counter() + seconds)
        ok = await asyncio.to_thread(_profile.finish, spy, 30)
        if not ok or not path.exists():
            log = (bench.workdir / f"py-spy-{suffix}.log").read_text(errors="replace")
            bench.note(f"py-spy failed on {name}: {log.strip()[-300:]}")
            continue
        bench.out["profile"][name] = {
            "file": str(path.relative_to(HERE.parent)),
            **_profile.top(path),
        }
    if not bench.args.quick:
        # The flame graph the lead asked for, of the legacy route.
        svg = RESULTS / "profile.svg"
        spy = _profile.start(
            bench.flowserve.pid, seconds, svg, "flamegraph", bench.workdir / "py-spy-svg.log"
        )
        await asyncio.sleep(0.5)
        await run_batch(bench.pools["fs-legacy"], 100, 1_000_000, 60, time.perf_counter() + seconds)
        if await asyncio.to_thread(_profile.finish, spy, 30):
            bench.out["profile"]["svg"] = str(svg.relative_to(HERE.parent))
