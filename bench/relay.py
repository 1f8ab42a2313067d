"""Relay overhead: flowserve versus the upstream called directly, and versus LiteLLM proxy.

    .venv/bin/python bench/relay.py            # full run, < 10 minutes on 2 cores
    .venv/bin/python bench/relay.py --quick    # sanity run, c=1 and 10, ~2 minutes; prints only
    .venv/bin/python bench/relay.py --render   # rewrite RESULTS.md from results/relay.json

One fake OpenAI-compatible upstream (bench/fake_upstream.py, its own process) serves every
client. Targets, interleaved round by round (A B C D A B C D ...) so machine noise hits all:

* direct          the upstream itself;
* fs-legacy       flowserve ``/stream_exported_flow`` (SSE, cumulative outputs);
* fs-v0           flowserve ``/inference/v0/stream?sse=true`` (SSE envelopes, deltas);
* litellm         LiteLLM proxy (bench/.venv-litellm, installed on first run);
* direct-sdk / litellm-sdk   the same two through the official openai SDK (c ≤ 10 only).

Phases: start-up (start → first request served, idle RSS); TTFT at c=1 (3-token responses);
paced streams (50 tokens, 10 ms apart) at c = 1, 10, 100, 1000; saturation (gap 0, closed
loop, c=100: streams/s, tokens/s, server CPU per 1,000 tokens); py-spy on flowserve under
saturation; 5,000 slow streams held open (RSS per open stream). Writes
bench/results/relay.json and the relay section of bench/RESULTS.md; prints the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _profile  # noqa: E402
import orjson  # noqa: E402
import uvloop  # noqa: E402
from _loadgen import ENVELOPE, LEGACY, OPENAI, Pool, SdkClient, Target, run_batch  # noqa: E402
from _procs import (  # noqa: E402
    ForeignLoad,
    cpu_seconds,
    git_state,
    machine,
    memory_kib,
    raise_nofile,
    stop_all,
)
from _render import render  # noqa: E402
from _report import summarise  # noqa: E402
from _servers import (  # noqa: E402
    FLOW_ID,
    ORG,
    FakeUpstream,
    Flowserve,
    LiteLLM,
    ensure_litellm,
    litellm_version,
)
from fake_upstream import TOKEN_WIDTH, expected_text  # noqa: E402

RESULTS = HERE / "results"
FS_TARGETS = ("fs-legacy", "fs-v0")


def plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "ttft_rounds": 40,
            "paced": {1: 4, 10: 1},
            "sat_slices": 1,
            "sat_seconds": 2.0,
            "coalesce_slices": 1,
            "profile_seconds": 3,
            "open_streams": 500,
            "litellm_open_streams": 200,
        }
    return {
        # p99 over 300 first tokens, and over 1,500 tokens at c=1 (120 and 500 left the
        # p99 to one or two samples, and two runs disagreed by 2x).
        "ttft_rounds": 300,
        "paced": {1: 30, 10: 4, 100: 2, 1000: 1},
        "sat_slices": 3,
        "sat_seconds": 3.0,
        "coalesce_slices": 2,
        "profile_seconds": 8,
        "open_streams": 5000,
        "litellm_open_streams": 1000,
    }


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.plan = plan(args.quick)
        self.workdir = workdir
        self.tokens = args.tokens
        self.gap_ms = args.gap_ms
        self.expected = expected_text(self.tokens)
        self.out: dict[str, Any] = {
            "machine": machine(),
            "flowserve": git_state(HERE.parent),
            "python": platform.python_version(),
            "config": {
                "tokens": self.tokens,
                "gap_ms": self.gap_ms,
                "quick": args.quick,
                "plan": {k: v for k, v in self.plan.items() if k != "paced"},
                "paced_rounds": {str(k): v for k, v in self.plan["paced"].items()},
                "client": "lean raw-HTTP/1.1 asyncio client, one process (bench/_loadgen.py); "
                "direct-sdk / litellm-sdk rows: openai SDK",
            },
            "servers": {},
            "ttft_c1": {},
            "paced": {},
            "saturation": {},
            "coalescing": {},
            "open_streams": {},
            "profile": {},
            "notes": [],
        }
        self.pools: dict[str, Pool] = {}
        self.sdks: dict[str, SdkClient] = {}
        self.pids: dict[str, int] = {}

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.out["notes"].append(text)

    # -- set-up ----------------------------------------------------------------------------

    def setup_sync(self) -> None:
        """Everything that must happen outside the event loop."""
        self.fake = FakeUpstream(self.workdir, self.tokens, self.gap_ms).start()
        self.pids["direct"] = self.fake.pid
        self.flowserve = Flowserve(self.workdir, self.fake.v1)
        self.flowserve.prepare()
        self.litellm: LiteLLM | None = None
        if self.args.no_litellm:
            self.litellm_problem: str | None = "skipped (--no-litellm)"
        else:
            print("setup: litellm[proxy] in bench/.venv-litellm ...", flush=True)
            self.litellm_problem = ensure_litellm(self.workdir / "litellm-install.log")
        if self.litellm_problem:
            self.note(f"LiteLLM not measured: {self.litellm_problem}")

    def targets(self) -> list[Target]:
        oa_body = orjson.dumps(
            {
                "model": "fake",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        fs_body = orjson.dumps({"in-0": "hi"})
        fs_auth = {"authorization": f"Bearer {self.flowserve.public_key}"}
        out = [
            Target(
                "direct",
                self.fake.port,
                "/v1/chat/completions",
                oa_body,
                OPENAI,
                {"authorization": "Bearer sk-fake"},
            ),
            Target(
                "fs-legacy",
                self.flowserve.port,
                f"/stream_exported_flow?flow_id={FLOW_ID}&org={ORG}",
                fs_body,
                LEGACY,
                fs_auth,
            ),
            Target(
                "fs-v0",
                self.flowserve.port,
                f"/inference/v0/stream/{ORG}/{FLOW_ID}?sse=true",
                fs_body,
                ENVELOPE,
                fs_auth,
            ),
        ]
        if self.litellm is not None:
            auth = {"authorization": f"Bearer {self.litellm.master_key}"}
            out.append(
                Target("litellm", self.litellm.port, "/v1/chat/completions", oa_body, OPENAI, auth)
            )
        return out

    async def start_flowserve(self, starts: int = 3) -> None:
        """Start flowserve ``starts`` times (the last one stays up): start to first request
        served is one noisy sample per start, so the median is reported."""
        served: list[float] = []
        for attempt in range(starts):
            if attempt:
                self.flowserve.stop()
            served.append(await self._start_flowserve_once())
        await asyncio.sleep(1.0)
        self.out["servers"]["flowserve"] = {
            "start_to_first_served_s": statistics.median(served),
            "start_to_first_served_all_s": served,
            "idle_rss_mib": memory_kib(self.flowserve.pid) / 1024,
            "command": "python -m flowserve serve (uvicorn, 1 worker, uvloop, httptools)",
            "env": "FLOWSERVE_WARM_UP=false, LOG_LEVEL=warning, SQLite (aiosqlite), "
            "rate and concurrency limits raised",
        }
        print(
            "flowserve: first request served "
            + ", ".join(f"{x:.2f}" for x in served)
            + " s after start; idle RSS "
            + f"{self.out['servers']['flowserve']['idle_rss_mib']:.1f} MiB",
            flush=True,
        )

    async def _start_flowserve_once(self) -> float:
        started = self.flowserve.start()
        self.pids["fs-legacy"] = self.pids["fs-v0"] = self.flowserve.pid
        # Start to first request served: retry the first stream until the port answers.
        probe = Target(
            "probe",
            self.flowserve.port,
            f"/stream_exported_flow?flow_id={FLOW_ID}&org={ORG}",
            orjson.dumps({"in-0": "hi"}),
            LEGACY,
            {"authorization": f"Bearer {self.flowserve.public_key}"},
        )
        return await self._first_served(probe, started, self.flowserve.process)

    async def _first_served(self, probe: Target, started: float, process: Any) -> float:
        pool = Pool(probe, TOKEN_WIDTH)
        deadline = started + 120
        try:
            while time.perf_counter() < deadline and process.poll() is None:
                result = await pool.stream(30)
                if result.error is None and result.text == self.expected:
                    return time.perf_counter() - started
                if result.error and not result.error.startswith("connect"):
                    raise RuntimeError(f"first request failed: {result.error}")
                await asyncio.sleep(0.005)
        finally:
            pool.close()
        raise RuntimeError(f"server did not serve a first request (exit {process.poll()})")

    async def start_litellm(self, record: bool = True) -> None:
        if self.litellm_problem:
            return
        self.litellm = LiteLLM(self.workdir, self.fake.v1)
        started = self.litellm.start()
        ready = await asyncio.to_thread(self.litellm.wait_ready, 180)
        if not ready:
            tail = self.litellm.log_tail()
            self.litellm_problem = f"proxy did not start: {tail}"
            self.note(f"LiteLLM not measured: {self.litellm_problem}")
            self.litellm.stop()
            self.litellm = None
            return
        self.pids["litellm"] = self.litellm.pid
        probe = Target(
            "probe",
            self.litellm.port,
            "/v1/chat/completions",
            orjson.dumps(
                {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            ),
            OPENAI,
            {"authorization": f"Bearer {self.litellm.master_key}"},
        )
        try:
            served = await self._first_served(probe, started, self.litellm.process)
        except RuntimeError as exc:
            self.litellm_problem = f"{exc}: {self.litellm.log_tail()}"
            self.note(f"LiteLLM not measured: {self.litellm_problem}")
            self.litellm.stop()
            self.litellm = None
            return
        if not record:
            return
        await asyncio.sleep(1.0)
        self.out["servers"]["litellm"] = {
            "version": litellm_version(),
            "start_to_first_served_s": served,
            "idle_rss_mib": memory_kib(self.litellm.pid) / 1024,
            "command": "litellm --config (uvicorn, --num_workers 1, uvloop)",
            "env": "LITELLM_LOG=ERROR, LITELLM_LOCAL_MODEL_COST_MAP=True, master key, no DB",
        }
        print(
            f"litellm {self.out['servers']['litellm']['version']}: first request served "
            f"{served:.2f} s after start, idle RSS "
            f"{self.out['servers']['litellm']['idle_rss_mib']:.1f} MiB",
            flush=True,
        )

    async def wait_for_quiet(self, limit_s: float = 30.0) -> None:
        """Wait (bounded) for one second in which other processes use under 0.1 core."""
        load = ForeignLoad()
        began = time.monotonic()
        cores = math.nan
        for _ in range(int(limit_s)):
            load.mark()
            await asyncio.sleep(1.0)
            _, cores = load.cores()
            if cores < 0.1:
                break
        waited = time.monotonic() - began
        self.out["quiet_wait"] = {"seconds": waited, "last_foreign_cores": cores}
        if cores >= 0.1:
            self.note(f"machine not quiet at start: other processes used {cores:.2f} cores")

    # -- phases ----------------------------------------------------------------------------

    def runners(self, sdk: bool) -> list[str]:
        names = list(self.pools)
        if sdk:
            names += list(self.sdks)
        return names

    async def batch(
        self, name: str, concurrency: int, per_worker: int, limit_s: float, deadline: float
    ) -> tuple[list[Any], float]:
        if name in self.pools:
            return await run_batch(self.pools[name], concurrency, per_worker, limit_s, deadline)
        return await self.sdks[name].batch(concurrency, per_worker, limit_s, deadline)

    async def interleaved(
        self,
        names: list[str],
        rounds: int,
        concurrency: int,
        limit_s: float,
        budget: float,
        settle: float,
        expected: str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """``rounds`` rounds; in each, every target runs one batch of ``concurrency``
        concurrent streams, in turn (the order rotated by one each round), with ``settle``
        seconds between batches so that work a server defers past the end of a response (run
        records, spend logs) does not land on the next target's batch."""
        results: dict[str, list[Any]] = {n: [] for n in names}
        walls = dict.fromkeys(names, 0.0)
        for round_no in range(rounds):
            # Each round starts one target later, so no target always follows the same one
            # (a fixed order made the target after LiteLLM pay for its deferred work).
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                got, wall = await self.batch(
                    name, concurrency, 1, limit_s, time.perf_counter() + budget
                )
                results[name] += got
                walls[name] += wall
                await asyncio.sleep(settle)
        gap_s = self.fake.stats()["gap_ms"] / 1000  # type: ignore[operator]
        text = expected or self.expected
        return {n: summarise(results[n], text, gap_s, walls[n]) for n in names}

    async def warm_up(self) -> None:
        self.fake.control(gap_ms=0)
        for name in self.runners(sdk=True):
            await self.batch(name, 10, 3, 30, time.perf_counter() + 30)

    async def phase_ttft(self) -> None:
        """TTFT at c=1 on short paced responses: the first token arrives on its own, as from a
        real model, so TTFT is not the time to relay a whole burst."""
        rounds, tokens = self.plan["ttft_rounds"], 3
        print(
            f"\nTTFT at c=1: {rounds} interleaved rounds of {tokens}-token responses "
            f"{self.gap_ms:g} ms apart",
            flush=True,
        )
        self.fake.control(gap_ms=self.gap_ms, tokens=tokens)
        try:
            self.out["ttft_c1"] = await self.interleaved(
                self.runners(sdk=True), rounds, 1, 30, 60, 0.02, expected_text(tokens)
            )
        finally:
            self.fake.control(tokens=self.tokens)
        for name, row in self.out["ttft_c1"].items():
            t = row["ttft_ms"]
            print(f"  {name:12} p50 {t['p50']:7.2f} ms  p99 {t['p99']:7.2f} ms", flush=True)

    async def phase_paced(self) -> None:
        self.fake.control(gap_ms=self.gap_ms)
        for concurrency, rounds in self.plan["paced"].items():
            print(
                f"\npaced: c={concurrency}, {self.tokens} tokens {self.gap_ms:g} ms apart, "
                f"{rounds} round(s)",
                flush=True,
            )
            names = self.runners(sdk=concurrency <= 10)
            cpu0 = {n: cpu_seconds(p) for n, p in self.pids.items()}
            settle = 0.1 if concurrency < 100 else 1.0
            rows = await self.interleaved(names, rounds, concurrency, 120, 90, settle)
            cpu = {n: cpu_seconds(p) - cpu0[n] for n, p in self.pids.items()}
            self.out["paced"][str(concurrency)] = rows
            offered = concurrency * 1000 / self.gap_ms
            direct = rows["direct"]["tokens_per_s"]
            if direct < 0.8 * offered:
                self.note(
                    f"c={concurrency}: the offered load ({offered:,.0f} tokens/s) is more than the "
                    f"direct client and fake upstream deliver on this machine ({direct:,.0f}): "
                    "the direct baseline is itself saturated, so 'added' figures at this "
                    "concurrency understate the relay's cost (they can go negative)"
                )
            self.out["paced"][str(concurrency) + "_server_cpu_s"] = cpu
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

    async def phase_saturation(self) -> None:
        slices, seconds = self.plan["sat_slices"], self.plan["sat_seconds"]
        concurrency = 100
        print(
            f"\nsaturation: gap 0, closed loop c={concurrency}, {slices} x {seconds:g} s "
            "per target, interleaved",
            flush=True,
        )
        self.fake.control(gap_ms=0)
        names = list(self.pools)
        acc = {
            n: {"results": [], "wall": 0.0, "cpu": 0.0, "fake_cpu": 0.0, "client_cpu": 0.0}
            for n in names
        }
        for _ in range(slices):
            for name in names:
                pid = self.pids[name]
                cpu0, fake0 = cpu_seconds(pid), cpu_seconds(self.fake.pid)
                client0 = sum(os.times()[:2])
                got, wall = await run_batch(
                    self.pools[name], concurrency, 1_000_000, 60, time.perf_counter() + seconds
                )
                a = acc[name]
                a["results"] += got
                a["wall"] += wall
                a["cpu"] += cpu_seconds(pid) - cpu0
                a["fake_cpu"] += cpu_seconds(self.fake.pid) - fake0
                a["client_cpu"] += sum(os.times()[:2]) - client0
        for name, a in acc.items():
            row = summarise(a["results"], self.expected, 0.0, a["wall"])
            tokens = row["completed"] * self.tokens
            per_k = 1000 / tokens if tokens else math.nan
            row.update(
                concurrency=concurrency,
                server_cpu_s=a["cpu"],
                server_cpu_s_per_1k_tokens=a["cpu"] * per_k,
                server_cpu_util=a["cpu"] / a["wall"],
                upstream_cpu_s_per_1k_tokens=a["fake_cpu"] * per_k,
                client_cpu_util=a["client_cpu"] / a["wall"],
                client="lean raw-HTTP client, 1 process",
                peak_rss_mib=memory_kib(self.pids[name], "VmHWM") / 1024,
            )
            self.out["saturation"][name] = row
            print(
                f"  {name:12} {row['streams_per_s']:8.1f} streams/s {row['tokens_per_s']:9.0f} "
                f"tok/s | server CPU {row['server_cpu_s_per_1k_tokens']:.3f} s/1k tok "
                f"({100 * row['server_cpu_util']:.0f}% of a core) | client CPU "
                f"{100 * row['client_cpu_util']:.0f}% | errors {row['errors'] or 0}",
                flush=True,
            )

    async def phase_coalescing(self) -> None:
        """What adaptive coalescing saves: the saturation load on flowserve as it runs and on
        a second flowserve with ``FLOWSERVE_STREAM_COALESCE=false`` (every event its own
        frame), interleaved slice by slice."""
        slices, seconds = self.plan["coalesce_slices"], self.plan["sat_seconds"]
        print(
            f"\ncoalescing: saturation on flowserve with coalescing on and off, "
            f"{slices} x {seconds:g} s each, interleaved",
            flush=True,
        )
        off = Flowserve(self.workdir / "no-coalesce", self.fake.v1)
        off.workdir.mkdir(exist_ok=True)
        await asyncio.to_thread(off.prepare)  # asyncio.run inside: not on this loop
        started = off.start({"FLOWSERVE_STREAM_COALESCE": "false"})
        pools: dict[str, tuple[Pool, int]] = {}
        try:
            auth = {"authorization": f"Bearer {off.public_key}"}
            probe = Target(
                "probe", off.port, f"/stream_exported_flow?flow_id={FLOW_ID}&org={ORG}",
                orjson.dumps({"in-0": "hi"}), LEGACY, auth,
            )  # fmt: skip
            await self._first_served(probe, started, off.process)
            for route in FS_TARGETS:
                on = self.pools[route].target
                pools[f"{route} on"] = (self.pools[route], self.flowserve.pid)
                twin = Target(on.name, off.port, on.path, on.body, on.kind, auth)
                pools[f"{route} off"] = (Pool(twin, TOKEN_WIDTH), off.pid)
            self.fake.control(gap_ms=0)
            for _, (pool, _) in pools.items():  # warm both
                await run_batch(pool, 10, 3, 30, time.perf_counter() + 30)
            acc = {n: {"results": [], "wall": 0.0, "cpu": 0.0} for n in pools}
            for _ in range(slices):
                for name, (pool, pid) in pools.items():
                    cpu0 = cpu_seconds(pid)
                    got, wall = await run_batch(
                        pool, 100, 1_000_000, 60, time.perf_counter() + seconds
                    )
                    acc[name]["results"] += got
                    acc[name]["wall"] += wall
                    acc[name]["cpu"] += cpu_seconds(pid) - cpu0
        finally:
            for name, (pool, _) in pools.items():
                if name.endswith(" off"):
                    pool.close()
            off.stop()
        for name, a in acc.items():
            row = summarise(a["results"], self.expected, 0.0, a["wall"])
            ok = [r for r in a["results"] if r.error is None and r.text == self.expected]
            tokens = row["completed"] * self.tokens
            row.update(
                server_cpu_s_per_1k_tokens=a["cpu"] * 1000 / tokens if tokens else math.nan,
                messages_per_stream=statistics.mean(r.messages for r in ok) if ok else math.nan,
                body_kib_per_stream=statistics.mean(r.body_bytes for r in ok) / 1024
                if ok
                else math.nan,
            )
            self.out["coalescing"][name] = row
            print(
                f"  {name:14} {row['streams_per_s']:8.1f} streams/s {row['tokens_per_s']:9.0f} "
                f"tok/s | server CPU {row['server_cpu_s_per_1k_tokens']:.3f} s/1k tok | "
                f"{row['messages_per_stream']:.1f} messages, "
                f"{row['body_kib_per_stream']:.1f} KiB per stream | errors {row['errors'] or 0}",
                flush=True,
            )

    async def phase_profile(self) -> None:
        seconds = self.plan["profile_seconds"]
        if _profile.py_spy() is None:
            self.note("py-spy is not installed in this venv: no profile (pip install py-spy)")
            return
        self.fake.control(gap_ms=0)
        for name, fmt in (("fs-legacy", "speedscope"), ("fs-v0", "speedscope")):
            suffix = name.removeprefix("fs-")
            path = RESULTS / f"profile-{suffix}.speedscope.json"
            print(f"\nprofile: py-spy on flowserve, {name} at saturation, {seconds} s", flush=True)
            spy = _profile.start(
                self.flowserve.pid, seconds, path, fmt, self.workdir / f"py-spy-{suffix}.log"
            )
            await asyncio.sleep(0.5)  # let py-spy attach
            await run_batch(self.pools[name], 100, 1_000_000, 60, time.perf_counter() + seconds)
            ok = await asyncio.to_thread(_profile.finish, spy, 30)
            if not ok or not path.exists():
                log = (self.workdir / f"py-spy-{suffix}.log").read_text(errors="replace")
                self.note(f"py-spy failed on {name}: {log.strip()[-300:]}")
                continue
            self.out["profile"][name] = {
                "file": str(path.relative_to(HERE.parent)),
                **_profile.top(path),
            }
        if not self.args.quick:
            # The flame graph the lead asked for, of the legacy route.
            svg = RESULTS / "profile.svg"
            spy = _profile.start(
                self.flowserve.pid, seconds, svg, "flamegraph", self.workdir / "py-spy-svg.log"
            )
            await asyncio.sleep(0.5)
            await run_batch(
                self.pools["fs-legacy"], 100, 1_000_000, 60, time.perf_counter() + seconds
            )
            if await asyncio.to_thread(_profile.finish, spy, 30):
                self.out["profile"]["svg"] = str(svg.relative_to(HERE.parent))

    async def phase_open_streams(self) -> None:
        """On fresh server processes (warmed with a few streams), so the RSS delta is the held
        streams' and not memory freed by the earlier phases and reused."""
        for name, key in (("flowserve", "fs-legacy"), ("litellm", "litellm")):
            if name in self.out["servers"] and key in self.pids:
                peak = memory_kib(self.pids[key], "VmHWM") / 1024
                self.out["servers"][name]["peak_rss_mib"] = peak
        print("\nheld streams: restarting the servers", flush=True)
        self.flowserve.stop()
        await self._start_flowserve_once()
        if self.litellm is not None:
            self.litellm.stop()
            self.litellm = None
            await self.start_litellm(record=False)
        for pool in self.pools.values():
            pool.close()
        self.pools = {t.name: Pool(t, TOKEN_WIDTH) for t in self.targets()}
        self.fake.control(gap_ms=0)
        for name in ("fs-legacy", "litellm"):
            if name in self.pools:
                await run_batch(self.pools[name], 10, 3, 30, time.perf_counter() + 30)
                self.pools[name].close()
        for name, count in (
            ("fs-legacy", self.plan["open_streams"]),
            ("litellm", self.plan["litellm_open_streams"]),
        ):
            if name in self.pools:
                await self._open_streams(name, count)

    async def _open_streams(self, name: str, count: int, stages: int = 5) -> None:
        """Hold ``count`` slow streams open (first token, then nothing for 60 s), opened in
        ``stages`` equal steps with RSS sampled after each: if the server stops streaming at
        some number (a connection-pool cap), the steps before it show what an *active*
        stream costs and the steps after it what a *waiting* one does."""
        pid = self.pids[name]
        print(f"\nheld streams: {count} slow streams through {name}", flush=True)
        self.fake.control(gap_ms=60_000)
        await asyncio.sleep(1.0)
        rss0 = memory_kib(pid)
        pool = Pool(self.pools[name].target, TOKEN_WIDTH)  # its own connections
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
        upstream_active = self.fake.stats()["active"]
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
        self.out["open_streams"][name] = row
        print(
            f"  {first}/{count} streams got their first token; upstream sees {upstream_active} "
            f"active; RSS {rss0 / 1024:.1f} → {rss1 / 1024:.1f} MiB = "
            f"{row['rss_per_stream_kib']:.1f} KiB per held stream, "
            f"{row['rss_per_active_stream_kib']:.1f} KiB per streaming one",
            flush=True,
        )
        if first < count:
            self.note(
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
            if not self.fake.stats()["active"]:
                break
            await asyncio.sleep(0.5)
        row["seconds_to_release"] = time.monotonic() - released
        self.fake.control(gap_ms=self.gap_ms)

    # -- run -------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.start_flowserve()
        await self.start_litellm()
        for target in self.targets():
            self.pools[target.name] = Pool(target, TOKEN_WIDTH)
        self.sdks["direct-sdk"] = SdkClient(self.fake.v1, "sk-fake", TOKEN_WIDTH)
        if self.litellm is not None:
            self.sdks["litellm-sdk"] = SdkClient(
                f"http://127.0.0.1:{self.litellm.port}/v1", self.litellm.master_key, TOKEN_WIDTH
            )
        await self.wait_for_quiet()
        foreign = ForeignLoad()
        try:
            await self.warm_up()
            for phase in (
                self.phase_ttft,
                self.phase_paced,
                self.phase_saturation,
                self.phase_coalescing,
            ):
                # The client's own garbage collector stays out of the measurements: a gen-2
                # pass over a heap of results would show up as a latency spike on any target.
                gc.collect()
                gc.freeze()
                gc.disable()
                try:
                    await self.timed(phase)
                finally:
                    gc.enable()
            await self.timed(self.phase_profile)
            await self.timed(self.phase_open_streams)
        finally:
            for pool in self.pools.values():
                pool.close()
            for sdk in self.sdks.values():
                await sdk.aclose()
        seconds, cores = foreign.cores()
        self.out["foreign_load"] = {"cpu_s": seconds, "avg_cores": cores}
        if cores > 0.1:
            self.note(
                f"other processes on this machine used {seconds:.0f} CPU-s during the "
                f"measurements ({cores:.2f} cores on average): figures are noisier than on "
                "a quiet machine (interleaving spreads the noise over all targets alike)"
            )

    async def timed(self, phase: Any) -> None:
        began = time.perf_counter()
        await phase()
        self.out.setdefault("phase_seconds", {})[phase.__name__] = time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="c=1 and 10, fewer requests")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM columns")
    parser.add_argument("--tokens", type=int, default=50, help="tokens per response")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="upstream gap between tokens")
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and the DB")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite RESULTS.md from results/relay.json"
    )
    args = parser.parse_args(argv)
    if args.render:
        markdown = render(json.loads((RESULTS / "relay.json").read_text()))
        write_section(HERE / "RESULTS.md", markdown)
        print(markdown)
        return 0
    nofile = raise_nofile()
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="flowserve-relay-"))
    RESULTS.mkdir(exist_ok=True)
    bench = Bench(args, workdir)
    bench.out["config"]["client_nofile"] = nofile
    try:
        bench.setup_sync()
        uvloop.run(bench.run())
    finally:
        for server in ("litellm", "flowserve", "fake"):
            process = getattr(bench, server, None)
            if process is not None and hasattr(process, "stop"):
                process.stop()
        stop_all()
        if args.keep_workdir:
            print(f"logs and database kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    bench.out["total_seconds"] = time.perf_counter() - began
    markdown = render(bench.out)
    print("\n" + markdown)
    if args.quick:  # a sanity run never replaces the full results
        (RESULTS / "relay-quick.json").write_text(json.dumps(bench.out, indent=2, default=str))
        written = "bench/results/relay-quick.json"
    else:
        (RESULTS / "relay.json").write_text(json.dumps(bench.out, indent=2, default=str))
        write_section(HERE / "RESULTS.md", markdown)
        written = "bench/results/relay.json and bench/RESULTS.md"
    print(f"\nwrote {written} in {bench.out['total_seconds']:.0f} s")
    return 0


BEGIN, END = "<!-- relay:begin -->", "<!-- relay:end -->"


def write_section(path: Path, markdown: str) -> None:
    """Replace (or append) the relay section of RESULTS.md, leaving other sections alone."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"{BEGIN}\n{markdown}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
