"""Soak test: a real server under a mix of good and bad clients for a bounded time.

    .venv/bin/python bench/soak.py [--seconds 60] [--local-clients 1]

Starts its own server process (temporary SQLite database, an org, its keys), publishes
scripted-provider flows (and one on the embedded model), then runs concurrent clients until
the time is up: good ones (legacy SSE, v0 NDJSON, blocking runs), a flow that fails, malformed
and oversized requests, wrong keys, clients that hang up mid-stream, runs stopped through the
API, readers of run records (the mix is ``bench/_soak_clients.py``). Loopback only; every loop
stops at the deadline and every request has a timeout.

Then it lets the server settle, reads the database, stops the server with SIGTERM and reports:
requests by kind and status, runs by final state, the server's memory (VmRSS) before and after
the load. Writes bench/results/soak.json. Exits 1 on any 5xx, any run left RUNNING, any answer
a client should not get, a transport error, or a server crash (early exit, or a traceback in
its log).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench_server import BenchServer  # noqa: E402
from _soak_clients import FLOWS, MIX, TIMEOUT, Stats, Target, local_model  # noqa: E402

SETTLE = 3.0  # seconds after the load before RUNNING rows count as leftovers


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def run_states(db: Path) -> Counter:
    with sqlite3.connect(db) as conn:
        return Counter(dict(conn.execute("SELECT state, count(*) FROM runs GROUP BY state")))


def missing_records(db: Path, run_ids: list[str]) -> list[str]:
    """Runs a client saw that have no record."""
    with sqlite3.connect(db) as conn:
        known = {row[0] for row in conn.execute("SELECT id FROM runs")}
    return [run_id for run_id in run_ids if run_id not in known]


async def client_loop(kind, fn, target: Target, stats: Stats, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=4)
    async with httpx.AsyncClient(
        base_url=target.base_url, timeout=TIMEOUT, limits=limits
    ) as client:
        while time.monotonic() < deadline:
            try:
                await fn(client, target, stats, rng)
                await asyncio.sleep(0)  # never starve the other clients
            except (
                httpx.HTTPError,
                json.JSONDecodeError,
                StopAsyncIteration,
                IndexError,
                KeyError,
            ) as exc:
                stats.errors[kind] += 1
                stats.wrong(kind, f"{type(exc).__name__}: {exc}")


def client_mix(local_clients: int) -> dict:
    mix = dict(MIX)
    if local_clients:
        mix["local-model"] = (local_model, local_clients)
    return mix


async def warm_up(target: Target, stats: Stats, local_clients: int) -> None:
    """One request of each kind, so that memory is measured with everything loaded (the
    embedded model, the caches), and growth under load shows."""
    async with httpx.AsyncClient(base_url=target.base_url, timeout=TIMEOUT) as client:
        for fn, _ in client_mix(local_clients).values():
            await fn(client, target, stats, random.Random(0))


async def load(target: Target, stats: Stats, seconds: float, local_clients: int) -> None:
    deadline = time.monotonic() + seconds
    mix = client_mix(local_clients)
    tasks = [
        client_loop(kind, fn, target, stats, deadline, seed=hash((kind, i)) & 0xFFFF)
        for kind, (fn, count) in mix.items()
        for i in range(count)
    ]
    await asyncio.gather(*tasks)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--local-clients", type=int, default=1, help="embedded-model clients")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "soak.json")
    parser.add_argument("--workdir", type=Path, help="keep the database and server log here")
    args = parser.parse_args()
    console = Console()
    # No rate limit, and a per-key run cap well above the clients' concurrency: a 429 then
    # means run slots leak. A run whose client disconnects is kept for it to resume
    # (resume_grace), holding its slot meanwhile: 1 s here, well under SETTLE, so that the
    # disconnecting clients' runs are still kept and cancelled, and are over when counted.
    env = {
        "FLOWSERVE_RATE_LIMIT_PER_MINUTE": "0",
        "FLOWSERVE_MAX_CONCURRENT_RUNS_PER_KEY": "100",
        "FLOWSERVE_DRAIN_SECONDS": "2",
        "FLOWSERVE_RESUME_GRACE": "1",
    }
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.workdir or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        server = BenchServer(tmp, env=env)
        server.__enter__()
        try:
            for name, text in FLOWS.items():
                if name != "soak-local" or args.local_clients:
                    server.publish(text)
            target = Target(server.base_url, server.org, server.public_key, server.private_key)
            pid = server.process.pid
            stats = Stats()
            asyncio.run(warm_up(target, stats, args.local_clients))
            rss_before = rss_kib(pid)
            started = time.monotonic()
            asyncio.run(load(target, stats, args.seconds, args.local_clients))
            elapsed = time.monotonic() - started
            time.sleep(SETTLE)
            alive = server.process.poll() is None
            rss_after = rss_kib(pid)
            db = tmp / "bench.db"
            states_live = run_states(db)
        finally:
            server.process.send_signal(signal.SIGTERM)
            try:
                exit_code = server.process.wait(timeout=30)
            except Exception:
                server.process.kill()
                exit_code = server.process.wait()
            server.log.close()
        states_after = run_states(db)
        for run_id in missing_records(db, [run_id for _, _, run_id in stats.run_ids]):
            stats.wrong("records", f"run {run_id} has no record")
        log = (tmp / "server.log").read_text(errors="replace")

    total = sum(stats.statuses.values())
    server_errors = {f"{k} {s}": n for (k, s), n in stats.statuses.items() if s >= 500}
    crashed = not alive or "Traceback" in log or exit_code not in (0, -signal.SIGTERM)
    result = {
        "seconds": round(elapsed, 1),
        "requests": total,
        "requests_per_second": round(total / elapsed, 1),
        "by_kind_and_status": {f"{k} {s}": n for (k, s), n in sorted(stats.statuses.items())},
        "transport_errors": dict(stats.errors),
        "unexpected_answers": stats.unexpected,
        "server_errors_5xx": server_errors,
        "runs_after_settle": dict(states_live),
        "runs_after_shutdown": dict(states_after),
        "running_leftovers": states_live.get("RUNNING", 0) + states_after.get("RUNNING", 0),
        "runs_seen_by_clients": len(stats.run_ids),
        "records_readable_only_on_retry": stats.late_records,
        "ttfb_ms_p50": round(1000 * (percentile(stats.ttfb, 0.5) or 0), 1),
        "ttfb_ms_p99": round(1000 * (percentile(stats.ttfb, 0.99) or 0), 1),
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "server_exit_code": exit_code,
        "crashed": crashed,
    }
    failed = bool(
        server_errors or result["running_leftovers"] or stats.unexpected or stats.errors or crashed
    )
    result["ok"] = not failed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    report(console, result, stats)
    if crashed and log:
        console.print(log[-3000:], markup=False)
    return 1 if failed else 0


def report(console: Console, result: dict, stats: Stats) -> None:
    requests = Table(title=f"Requests ({result['requests']} in {result['seconds']} s)")
    for column in ("client kind", "status", "count"):
        requests.add_column(column, justify="right" if column == "count" else "left")
    for (kind, status), count in sorted(stats.statuses.items()):
        requests.add_row(kind, str(status), str(count))
    console.print(requests)
    runs = Table(title="Runs by final state (database)")
    runs.add_column("state")
    runs.add_column("after settle", justify="right")
    runs.add_column("after shutdown", justify="right")
    for state in sorted(set(result["runs_after_settle"]) | set(result["runs_after_shutdown"])):
        runs.add_row(
            state,
            str(result["runs_after_settle"].get(state, 0)),
            str(result["runs_after_shutdown"].get(state, 0)),
        )
    console.print(runs)
    summary = Table(title="Summary")
    summary.add_column("what")
    summary.add_column("value", justify="right")
    rows = [
        ("requests/s", result["requests_per_second"]),
        ("stream TTFB p50 / p99 (ms)", f"{result['ttfb_ms_p50']} / {result['ttfb_ms_p99']}"),
        ("5xx answers", sum(result["server_errors_5xx"].values())),
        ("runs left RUNNING", result["running_leftovers"]),
        ("records readable only on retry", result["records_readable_only_on_retry"]),
        ("unexpected answers", len(result["unexpected_answers"])),
        ("transport errors", sum(result["transport_errors"].values())),
        (
            "server RSS before / after (MiB)",
            _mib(result["rss_kib_before"], result["rss_kib_after"]),
        ),
        ("server exit code", result["server_exit_code"]),
        ("crashed", result["crashed"]),
        ("verdict", "OK" if result["ok"] else "FAILED"),
    ]
    for what, value in rows:
        summary.add_row(what, str(value))
    console.print(summary)
    for line in result["unexpected_answers"][:20]:
        console.print(f"  unexpected: {line}", markup=False)


def _mib(before: int | None, after: int | None) -> str:
    if before is None or after is None:
        return "n/a"
    return f"{before / 1024:.1f} / {after / 1024:.1f}"


if __name__ == "__main__":
    sys.exit(main())
