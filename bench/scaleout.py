"""Scale-out: flowserve on SQLite, on PostgreSQL, and as two processes sharing PostgreSQL + Redis.

    .venv/bin/python bench/scaleout.py            # full run, about 5 minutes on 2 cores
    .venv/bin/python bench/scaleout.py --quick    # sanity run, ~1 minute; prints only
    .venv/bin/python bench/scaleout.py --render   # rewrite RESULTS.md from results/scaleout.json

One fake OpenAI-compatible upstream (bench/fake_upstream.py) and four ``flowserve serve``
processes: ``sqlite-a`` (SQLite, no Redis), ``pg-a`` (PostgreSQL, no Redis), and ``cluster-a``
and ``cluster-b`` (one PostgreSQL database, the machine's Redis under a prefix of this run's).
It measures (issue 12):

* saturation tokens/s with 1 and 2 processes on PostgreSQL + Redis against 1 process on
  SQLite (and 1 on PostgreSQL alone), with the CPU of every process involved;
* what Redis adds to TTFT at c=1 and to the per-token delay p99 at c=100 (``pg-a`` against
  ``cluster-a``, interleaved round by round);
* resume latency with ``last-event-id``, on the run's own process and on the other one;
* a stop sent to B for a run A owns, until A's stream ends;
* a key revoked and a flow published through A, until B answers accordingly.

Writes bench/results/scaleout.json and the scale-out section of bench/RESULTS.md (``--quick``:
bench/results/scaleout-quick.json only). The harness is bench/_scaleout_harness.py, the
phases bench/_scaleout_phases.py and bench/_scaleout_cluster.py, the servers
bench/_scaleout_servers.py, the requests besides streams bench/_scaleout_client.py, the
tables bench/_scaleout_render.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import uvloop  # noqa: E402
from _procs import ForeignLoad, raise_nofile, stop_all  # noqa: E402
from _scaleout_cluster import phase_invalidations, phase_resume, phase_stop  # noqa: E402
from _scaleout_harness import RESULTS, Scale  # noqa: E402
from _scaleout_phases import phase_redis_path, phase_saturation, warm_up  # noqa: E402
from _scaleout_render import render  # noqa: E402

PHASES = (phase_saturation, phase_redis_path, phase_resume, phase_stop, phase_invalidations)


async def run(s: Scale) -> None:
    s.make_pools()
    try:
        await s.wait_for_quiet(15)
        s.load_mark("before")
        foreign = ForeignLoad()
        await warm_up(s)
        for phase in PHASES:
            # The client's garbage collector stays out of the measurements.
            gc.collect()
            gc.freeze()
            gc.disable()
            began = time.perf_counter()
            try:
                await phase(s)
            except Exception as exc:  # keep the other phases' figures, say what broke
                traceback.print_exc()
                s.note(f"{phase.__name__} failed: {exc!r}")
            finally:
                gc.enable()
            s.out.setdefault("phase_seconds", {})[phase.__name__] = time.perf_counter() - began
        seconds, cores = foreign.cores()
        s.out["foreign_load"] = {"cpu_s": seconds, "avg_cores": cores}
        s.load_mark("after")
        s.out["metrics"] = {
            name: {n.name: n.metrics() for n in d.nodes} for name, d in s.deployments.items()
        }
        upstream = int(str(s.fake.stats()["streams"]))
        s.out["upstream_calls_by_flowserve"] = upstream - s.direct_streams
    finally:
        s.close_pools()


def health(s: Scale) -> None:
    """After the processes stopped: every run record final, and what their logs complained of."""
    out: dict[str, Any] = {}
    for name, d in s.deployments.items():
        problems: dict[str, int] = {}
        for node in d.nodes:
            for message, count in node.log_problems().items():
                problems[f"{node.name}: {message}"] = count
        try:
            states = d.run_states()
        except Exception as exc:
            states = {"unreadable": 0}
            s.note(f"run records of {name} could not be read: {exc!r}")
        out[name] = {
            "run_states": states,
            "log_problems": sum(problems.values()),
            "log_messages": problems,
            "metrics": s.out.get("metrics", {}).get(name, {}),
        }
        if states.get("RUNNING"):
            s.note(f"{name}: {states['RUNNING']} run(s) left RUNNING after the processes stopped")
    s.out["health"] = out
    calls = s.out.get("upstream_calls_by_flowserve")
    recorded = sum(n for row in out.values() for n in row["run_states"].values())
    s.out["runs_recorded"] = recorded
    if calls is not None and recorded != calls:
        s.note(
            f"flowserve called the upstream {calls} times but recorded {recorded} runs: "
            f"{calls - recorded} run(s) without a record"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, ~1 minute")
    parser.add_argument("--tokens", type=int, default=50, help="tokens per response")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="upstream gap between tokens")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the logs")
    parser.add_argument(
        "--redis-pool",
        type=int,
        default=0,
        help="add ?max_connections=N to FLOWSERVE_REDIS_URL (redis-py's pool; default: none)",
    )
    parser.add_argument(
        "--render", action="store_true", help="only rewrite RESULTS.md from results/scaleout.json"
    )
    args = parser.parse_args(argv)
    if args.render:
        markdown = render(json.loads((RESULTS / "scaleout.json").read_text()))
        write_section(HERE / "RESULTS.md", markdown)
        print(markdown)
        return 0
    raise_nofile()
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="flowserve-scaleout-"))
    RESULTS.mkdir(exist_ok=True)
    s = Scale(args, workdir)
    try:
        s.setup()
        uvloop.run(run(s))
    finally:
        s.teardown()
        stop_all()
        health(s)
        s.drop()
        if args.keep_workdir:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    s.out["total_seconds"] = time.perf_counter() - began
    markdown = render(s.out)
    print("\n" + markdown)
    name = "scaleout-quick.json" if args.quick else "scaleout.json"
    (RESULTS / name).write_text(json.dumps(s.out, indent=2, default=str))
    if not args.quick:  # a sanity run never replaces the full results
        write_section(HERE / "RESULTS.md", markdown)
    written = f"bench/results/{name}" + ("" if args.quick else " and bench/RESULTS.md")
    print(f"\nwrote {written} in {s.out['total_seconds']:.0f} s")
    return 0


BEGIN, END = "<!-- scaleout:begin -->", "<!-- scaleout:end -->"


def write_section(path: Path, markdown: str) -> None:
    """Replace (or append) the scale-out section of RESULTS.md, leaving other sections alone."""
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
