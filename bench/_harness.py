"""The relay benchmark's harness: its plan, the servers it starts, the targets and their load
clients, and the interleaved rounds every latency phase runs in (bench/relay.py drives it;
the phases are in bench/_phases.py and bench/_held.py)."""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
from _loadgen import ENVELOPE, LEGACY, OPENAI, Pool, SdkClient, Target, run_batch
from _procs import ForeignLoad, git_state, machine, memory_kib
from _report import summarise
from _servers import FLOW_ID, ORG, FakeUpstream, Flowserve, LiteLLM, ensure_litellm, litellm_version
from fake_upstream import TOKEN_WIDTH, expected_text

HERE = Path(__file__).resolve().parent
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


def flowserve_probe(server: Flowserve) -> Target:
    """A legacy stream of the relay flow on ``server``: what start-up is timed with."""
    return Target(
        "probe",
        server.port,
        f"/stream_exported_flow?flow_id={FLOW_ID}&org={ORG}",
        orjson.dumps({"in-0": "hi"}),
        LEGACY,
        {"authorization": f"Bearer {server.public_key}"},
    )


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
            served.append(await self.start_flowserve_once())
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

    async def start_flowserve_once(self) -> float:
        started = self.flowserve.start()
        self.pids["fs-legacy"] = self.pids["fs-v0"] = self.flowserve.pid
        return await self.first_served(
            flowserve_probe(self.flowserve), started, self.flowserve.process
        )

    async def first_served(self, probe: Target, started: float, process: Any) -> float:
        """Seconds from ``started`` to the first stream ``probe`` gets whole: the first
        stream is retried until the port answers."""
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
            served = await self.first_served(probe, started, self.litellm.process)
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
