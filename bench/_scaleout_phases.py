"""The scale-out benchmark's phases. Each takes the harness (bench/_scaleout_harness.py) and
writes its figures into ``s.out``:

* saturation: gap 0, closed loop, on SQLite (1 process), PostgreSQL (1 process, no Redis),
  PostgreSQL + Redis with 1 and with 2 processes, slices interleaved, CPU of every process;
* Redis in the path: TTFT at c=1 and per-token delay at c=100, the same PostgreSQL process
  set-up with and without Redis, interleaved round by round (and the upstream directly).

The phases across processes (resume, stop, invalidations) are bench/_scaleout_cluster.py.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from typing import Any

from _report import MS, pct, summarise
from _scaleout_harness import PG, REDIS1, REDIS2, SQLITE, Scale
from _scaleout_servers import REDIS_URL, Node
from fake_upstream import expected_text

SATURATION_C = 100


def dist(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "max": max(values, default=float("nan")),
    }


async def warm_up(s: Scale) -> None:
    s.fake.control(gap_ms=0, tokens=s.tokens)
    for name in s.pools:
        await s.batch(name, 10)
        await s.batch(name, 10)


async def phase_saturation(s: Scale) -> None:
    slices, seconds = s.plan["sat_slices"], s.plan["sat_seconds"]
    names = [SQLITE, PG, REDIS1, REDIS2]
    print(
        f"\nsaturation: gap 0, {s.tokens} tokens, closed loop c={SATURATION_C}, "
        f"{slices} x {seconds:g} s per target, interleaved",
        flush=True,
    )
    s.fake.control(gap_ms=0, tokens=s.tokens)
    acc: dict[str, dict[str, Any]] = {n: {"results": [], "wall": 0.0, "cpu": {}} for n in names}
    for round_no in range(slices):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            got = await s.metered(name, seconds, SATURATION_C)
            a = acc[name]
            a["results"] += got["results"]
            a["wall"] += got["wall"]
            for group, value in got["cpu"].items():
                a["cpu"][group] = a["cpu"].get(group, 0.0) + value
            await asyncio.sleep(0.5)
    out: dict[str, Any] = {}
    for name in names:
        a = acc[name]
        row = summarise(a["results"], s.expected, 0.0, a["wall"])
        ok = [r for r in a["results"] if r.error is None and r.text == s.expected]
        cpu_wall = a["cpu"].pop("wall")
        busy = a["cpu"].pop("machine busy")
        serving = [n.name for n in _nodes_of(s, name)]
        cores: dict[str, float] = {}
        for group, value in a["cpu"].items():
            if group in s.nodes and group not in serving:
                group = "idle flowserve processes"
            cores[group] = cores.get(group, 0.0) + value / cpu_wall
        measured = sum(cores.values())
        fs_cpu = sum(a["cpu"][g] for g in serving)
        row.update(
            concurrency=SATURATION_C,
            processes=serving,
            cpu_cores=cores,
            cpu_cores_flowserve=sum(cores[g] for g in serving),
            cpu_cores_measured=measured,
            cpu_cores_machine=busy / cpu_wall,
            cpu_cores_other=max(busy / cpu_wall - measured, 0.0),
            flowserve_cpu_ms_per_1k_tokens=fs_cpu * 1e6 / max(row["completed"] * s.tokens, 1),
            # SSE messages per stream: fewer when a busy process coalesces more events a frame
            messages_per_stream=statistics.mean(r.messages for r in ok) if ok else math.nan,
        )
        out[name] = row
        shown = ", ".join(f"{g} {v:.2f}" for g, v in cores.items())
        print(
            f"  {name:12} {row['tokens_per_s']:8.0f} tok/s {row['streams_per_s']:7.1f} streams/s"
            f" | cores: {shown} | machine {row['cpu_cores_machine']:.2f}"
            f" | errors {row['errors'] or 0}",
            flush=True,
        )
    base = out[SQLITE]["tokens_per_s"]
    for name in names:
        out[name]["x_sqlite"] = out[name]["tokens_per_s"] / base if base else float("nan")
    s.out["saturation"] = out


def _nodes_of(s: Scale, target: str) -> list[Node]:
    return {
        SQLITE: [s.nodes["sqlite-a"]],
        PG: [s.nodes["pg-a"]],
        REDIS1: [s.a],
        REDIS2: [s.a, s.b],
    }[target]


async def phase_redis_path(s: Scale) -> None:
    """TTFT at c=1 and per-token delay at c=100, with Redis in the path and without."""
    rounds = s.plan["ttft_rounds"]
    names = ["direct", SQLITE, PG, REDIS1]
    print(f"\nTTFT c=1: {rounds} interleaved rounds, 3 tokens {s.gap_ms:g} ms apart", flush=True)
    s.fake.control(gap_ms=s.gap_ms, tokens=3)
    ttft = await s.interleaved(names, rounds, 1, 0.02, expected_text(3))
    for name, row in ttft.items():
        t = row["ttft_ms"]
        print(f"  {name:12} p50 {t['p50']:7.3f} ms  p99 {t['p99']:7.3f} ms", flush=True)
    s.out["redis_ping"] = await _redis_ping(s.plan["ttft_rounds"])
    ping = s.out["redis_ping"]
    print(f"  Redis PING from here: p50 {ping['p50']:.3f} ms p99 {ping['p99']:.3f} ms", flush=True)
    rounds = s.plan["paced_rounds"]
    names = ["direct", PG, REDIS1]
    print(
        f"\nper-token delay c=100: {rounds} interleaved rounds, {s.tokens} tokens "
        f"{s.gap_ms:g} ms apart",
        flush=True,
    )
    s.fake.control(gap_ms=s.gap_ms, tokens=s.tokens)
    paced = await s.interleaved(names, rounds, 100, 1.0, s.expected)
    for name, row in paced.items():
        d = row["token_delay_ms"]
        print(
            f"  {name:12} ok {row['completed']}/{row['streams']} token delay p50 "
            f"{d['p50']:7.3f} p99 {d['p99']:7.3f} ms | TTFT p50 {row['ttft_ms']['p50']:.2f}",
            flush=True,
        )
    redis_vs_pg = {
        "ttft_c1_p50_ms": ttft[REDIS1]["ttft_ms"]["p50"] - ttft[PG]["ttft_ms"]["p50"],
        "ttft_c1_p99_ms": ttft[REDIS1]["ttft_ms"]["p99"] - ttft[PG]["ttft_ms"]["p99"],
        "token_c100_p50_ms": paced[REDIS1]["token_delay_ms"]["p50"]
        - paced[PG]["token_delay_ms"]["p50"],
        "token_c100_p99_ms": paced[REDIS1]["token_delay_ms"]["p99"]
        - paced[PG]["token_delay_ms"]["p99"],
    }
    pairs = [
        r["token_p99"] - p["token_p99"]
        for r, p in zip(paced[REDIS1]["rounds"], paced[PG]["rounds"], strict=True)
    ]
    if pairs:
        redis_vs_pg["token_c100_p99_per_round_ms"] = pairs
        redis_vs_pg["token_c100_p99_median_of_rounds_ms"] = statistics.median(pairs)
    s.out["ttft_c1"], s.out["paced_c100"], s.out["redis_added"] = ttft, paced, redis_vs_pg
    print(
        "  Redis added (pg+redis minus pg): TTFT p50 "
        f"{redis_vs_pg['ttft_c1_p50_ms']:+.3f} ms, per-token p99 c=100 "
        f"{redis_vs_pg['token_c100_p99_ms']:+.3f} ms",
        flush=True,
    )


async def _redis_ping(n: int) -> dict[str, float]:
    """One Redis round trip as this machine gives it now: ``n`` PINGs 5 ms apart, from this
    process (redis-py's asyncio client, so a little of it is the client's own CPU)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        await client.ping()
        times = []
        for _ in range(n):
            began = time.perf_counter()
            await client.ping()
            times.append((time.perf_counter() - began) * MS)
            await asyncio.sleep(0.005)
    finally:
        await client.aclose()
    return dist(times)
