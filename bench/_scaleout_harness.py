"""The scale-out benchmark's harness: its plan, the servers it starts, the load targets, and
the two ways it puts load on them (interleaved rounds of batches, closed loops with CPU
metered). bench/scaleout.py drives it; the phases are bench/_scaleout_phases.py."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import platform
import time
from pathlib import Path
from typing import Any

from _loadgen import OPENAI, Pool, StreamResult, Target
from _procs import ForeignLoad, git_state, machine, machine_busy_seconds
from _report import summarise
from _scaleout_client import legacy_target
from _scaleout_servers import (
    REDIS_URL,
    CpuMeter,
    Deployment,
    Node,
    cpu_probe,
    loadavg,
    wait_up,
)
from _servers import FakeUpstream
from fake_upstream import TOKEN_WIDTH, expected_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# The load targets: a name, and the processes that serve it (requests spread round-robin).
SQLITE, PG, REDIS1, REDIS2 = "sqlite 1p", "pg 1p", "pg+redis 1p", "pg+redis 2p"


def plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "sat_slices": 1,
            "sat_seconds": 2.0,
            "ttft_rounds": 40,
            "paced_rounds": 2,
            "resume_samples": 20,
            "stop_samples": 10,
            "revoke_samples": 5,
            "publish_samples": 5,
        }
    return {
        "sat_slices": 3,
        "sat_seconds": 3.0,
        "ttft_rounds": 300,
        "paced_rounds": 8,
        "resume_samples": 200,  # per condition (same process, other process)
        "stop_samples": 100,  # per condition (sent to A, sent to B)
        "revoke_samples": 30,
        "publish_samples": 30,
    }


class Scale:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.plan = plan(args.quick)
        self.workdir = workdir
        self.tokens, self.gap_ms = args.tokens, args.gap_ms
        self.expected = expected_text(self.tokens)
        self.out: dict[str, Any] = {
            "machine": machine(),
            "flowserve": git_state(HERE.parent),
            "python": platform.python_version(),
            "config": {
                "tokens": self.tokens,
                "gap_ms": self.gap_ms,
                "quick": args.quick,
                "plan": self.plan,
                "client": "lean raw-HTTP/1.1 asyncio client, one process (bench/_loadgen.py)",
                "route": "/stream_exported_flow (legacy cumulative SSE)",
            },
            "notes": [],
        }
        # The brief's URL as it is; --redis-pool adds redis-py's pool size to it (its asyncio
        # pool allows 100 connections by default, and flowserve does not set one).
        self.redis_url = REDIS_URL
        if args.redis_pool:
            self.redis_url += f"?max_connections={args.redis_pool}"
        self.out["config"]["redis_url"] = self.redis_url
        if args.redis_pool:
            self.note(
                f"FLOWSERVE_REDIS_URL carries max_connections={args.redis_pool}: redis-py's "
                "asyncio pool allows 100 connections unless told otherwise, and flowserve sets "
                "none; at c=100 that pool ran out, flowserve took the MaxConnectionsError for "
                "Redis being unreachable and dropped run events (run without --redis-pool to "
                "see it: the targets count the events not written)"
            )
        self.deployments: dict[str, Deployment] = {}
        self.nodes: dict[str, Node] = {}
        self.pools: dict[str, list[Pool]] = {}
        self.direct_streams = 0  # streams sent to the upstream itself, not through flowserve

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.out["notes"].append(text)

    # -- set-up (outside the event loop) -----------------------------------------------------

    def setup(self) -> None:
        probe = self.out["cpu_probe"] = cpu_probe()
        print(f"CPU probe: two busy processes do {probe['x']:.2f}x the work of one", flush=True)
        self.fake = FakeUpstream(self.workdir, self.tokens, self.gap_ms).start()
        revocable = self.plan["revoke_samples"] + 2
        # One at a time, so that a failure leaves only what exists to drop.
        self.deployments["sqlite"] = Deployment.sqlite(self.workdir / "sqlite")
        self.deployments["pg"] = Deployment.postgres("pg", self.workdir / "pg", redis=None)
        self.deployments["cluster"] = Deployment.postgres(
            "cluster", self.workdir / "cluster", redis=self.redis_url
        )
        for name, d in self.deployments.items():
            d.prepare(self.fake.v1, revocable if name == "cluster" else 0)
        began = time.perf_counter()
        for name, d in self.deployments.items():
            d.start(2 if name == "cluster" else 1)
            for node in d.nodes:
                self.nodes[node.name] = node
        wait_up(list(self.nodes.values()))
        self.out["servers"] = {
            "start_all_s": time.perf_counter() - began,
            "processes": {
                n.name: n.deployment.database_url.split(":", 1)[0] for n in self.nodes.values()
            },
            "redis": "redis://127.0.0.1:6379/0 (the machine's, shared), prefix per run",
            "postgres": "127.0.0.1:5432 (the machine's, shared), a fresh database per deployment",
            "env": "FLOWSERVE_WARM_UP=false, LOG_LEVEL=warning, rate limit 0, concurrency caps "
            "1,000,000, key/flow cache ttl 60 s, resume_grace and heartbeat_interval default",
        }
        print(
            f"servers up: {', '.join(self.nodes)} ({self.out['servers']['start_all_s']:.1f} s)",
            flush=True,
        )

    def teardown(self) -> None:
        for d in self.deployments.values():
            d.stop()
        if getattr(self, "fake", None) is not None:
            self.fake.stop()

    def drop(self) -> None:
        for d in self.deployments.values():
            try:
                d.drop()
            except Exception as exc:  # report, and keep dropping the others
                self.note(f"could not drop database {d.pg_name}: {exc!r}")

    # -- targets ------------------------------------------------------------------------------

    @property
    def a(self) -> Node:
        return self.nodes["cluster-a"]

    @property
    def b(self) -> Node:
        return self.nodes["cluster-b"]

    def token(self, node: Node) -> str:
        assert node.deployment.keys is not None
        return node.deployment.keys.public

    def private(self, node: Node) -> str:
        assert node.deployment.keys is not None
        return node.deployment.keys.private

    def make_pools(self) -> None:
        def pool(node: Node) -> Pool:
            return Pool(legacy_target(node.port, self.token(node)), TOKEN_WIDTH)

        direct = Target(
            "direct",
            self.fake.port,
            "/v1/chat/completions",
            b'{"model":"fake","messages":[{"role":"user","content":"hi"}],"stream":true,'
            b'"stream_options":{"include_usage":true}}',
            OPENAI,
            {"authorization": "Bearer sk-fake"},
        )
        a = pool(self.a)
        self.pools = {
            "direct": [Pool(direct, TOKEN_WIDTH)],
            SQLITE: [pool(self.nodes["sqlite-a"])],
            PG: [pool(self.nodes["pg-a"])],
            REDIS1: [a],
            REDIS2: [a, pool(self.b)],
        }

    def close_pools(self) -> None:
        for pools in self.pools.values():
            for p in pools:
                p.close()

    def meter(self) -> CpuMeter:
        dbs = [d.pg_name for d in self.deployments.values() if d.pg_name]
        return CpuMeter(list(self.nodes.values()), self.fake.pid, dbs)

    # -- load ---------------------------------------------------------------------------------

    async def batch(
        self, name: str, concurrency: int, limit_s: float = 120.0
    ) -> tuple[list[StreamResult], float]:
        """``concurrency`` streams started together, spread round-robin over the target's
        processes."""
        pools = self.pools[name]
        if name == "direct":
            self.direct_streams += concurrency
        started = time.perf_counter()
        got = await asyncio.gather(
            *(pools[i % len(pools)].stream(limit_s) for i in range(concurrency))
        )
        return list(got), time.perf_counter() - started

    async def closed_loop(
        self, name: str, concurrency: int, seconds: float, limit_s: float = 60.0
    ) -> tuple[list[StreamResult], float]:
        """``concurrency`` workers streaming back to back for ``seconds``; each stream goes to
        the target's next process in turn."""
        pools = self.pools[name]
        turn = itertools.count()
        deadline = time.perf_counter() + seconds

        async def worker() -> list[StreamResult]:
            out = []
            while time.perf_counter() < deadline:
                out.append(await pools[next(turn) % len(pools)].stream(limit_s))
            return out

        started = time.perf_counter()
        done = await asyncio.gather(*(worker() for _ in range(concurrency)))
        return [r for batch in done for r in batch], time.perf_counter() - started

    async def interleaved(
        self, names: list[str], rounds: int, concurrency: int, settle: float, expected: str
    ) -> dict[str, Any]:
        """``rounds`` rounds; in each, every target runs one batch, in an order rotated by one
        each round, ``settle`` s apart. Per target: the summary over all rounds and each
        round's own (to see how much a percentile moves from round to round)."""
        results: dict[str, list[StreamResult]] = {n: [] for n in names}
        walls = dict.fromkeys(names, 0.0)
        per_round: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        gap_s = float(self.fake.stats()["gap_ms"]) / 1000  # type: ignore[arg-type]
        for round_no in range(rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                got, wall = await self.batch(name, concurrency)
                results[name] += got
                walls[name] += wall
                if rounds > 1 and concurrency > 1:
                    per_round[name].append(summarise(got, expected, gap_s, wall))
                await asyncio.sleep(settle)
        out: dict[str, Any] = {}
        for n in names:
            row = summarise(results[n], expected, gap_s, walls[n])
            row["rounds"] = [
                {"ttft_p99": r["ttft_ms"]["p99"], "token_p99": r["token_delay_ms"]["p99"]}
                for r in per_round[n]
            ]
            out[n] = row
        return out

    async def metered(self, name: str, seconds: float, concurrency: int) -> dict[str, Any]:
        """One closed-loop slice with the CPU of everything measured."""
        meter = self.meter()
        await meter.begin()
        busy0 = machine_busy_seconds()
        got, wall = await self.closed_loop(name, concurrency, seconds)
        cpu = await meter.end()
        cpu["machine busy"] = machine_busy_seconds() - busy0
        return {"results": got, "wall": wall, "cpu": cpu}

    async def wait_for_quiet(self, limit_s: float) -> None:
        """Wait (bounded) for one second in which other processes use under 0.2 core."""
        load = ForeignLoad()
        cores = float("nan")
        began = time.monotonic()
        for _ in range(int(limit_s)):
            load.mark()
            await asyncio.sleep(1.0)
            _, cores = load.cores()
            if cores < 0.2:
                break
        self.out["quiet_wait"] = {"seconds": time.monotonic() - began, "foreign_cores": cores}
        if cores >= 0.2:
            self.note(f"machine not quiet at start: other processes used {cores:.2f} cores")

    def load_mark(self, when: str) -> None:
        self.out.setdefault("loadavg", {})[when] = loadavg()
