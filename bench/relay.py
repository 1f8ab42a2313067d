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

This file runs the phases in order and writes the results; the harness (servers, targets,
interleaved rounds) is bench/_harness.py, the load phases bench/_phases.py, the held streams
bench/_held.py, the tables bench/_render.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import uvloop  # noqa: E402
from _harness import RESULTS, Bench  # noqa: E402
from _held import phase_open_streams  # noqa: E402
from _loadgen import Pool, SdkClient  # noqa: E402
from _phases import (  # noqa: E402
    phase_coalescing,
    phase_paced,
    phase_profile,
    phase_saturation,
    phase_ttft,
)
from _procs import (  # noqa: E402
    ForeignLoad,
    raise_nofile,
    stop_all,
)
from _render import render  # noqa: E402
from fake_upstream import TOKEN_WIDTH  # noqa: E402


async def run(bench: Bench) -> None:
    await bench.start_flowserve()
    await bench.start_litellm()
    for target in bench.targets():
        bench.pools[target.name] = Pool(target, TOKEN_WIDTH)
    bench.sdks["direct-sdk"] = SdkClient(bench.fake.v1, "sk-fake", TOKEN_WIDTH)
    if bench.litellm is not None:
        bench.sdks["litellm-sdk"] = SdkClient(
            f"http://127.0.0.1:{bench.litellm.port}/v1", bench.litellm.master_key, TOKEN_WIDTH
        )
    await bench.wait_for_quiet()
    foreign = ForeignLoad()
    try:
        await bench.warm_up()
        for phase in (
            phase_ttft,
            phase_paced,
            phase_saturation,
            phase_coalescing,
        ):
            # The client's own garbage collector stays out of the measurements: a gen-2
            # pass over a heap of results would show up as a latency spike on any target.
            gc.collect()
            gc.freeze()
            gc.disable()
            try:
                await timed(bench, phase)
            finally:
                gc.enable()
        await timed(bench, phase_profile)
        await timed(bench, phase_open_streams)
    finally:
        for pool in bench.pools.values():
            pool.close()
        for sdk in bench.sdks.values():
            await sdk.aclose()
    seconds, cores = foreign.cores()
    bench.out["foreign_load"] = {"cpu_s": seconds, "avg_cores": cores}
    if cores > 0.1:
        bench.note(
            f"other processes on this machine used {seconds:.0f} CPU-s during the "
            f"measurements ({cores:.2f} cores on average): figures are noisier than on "
            "a quiet machine (interleaving spreads the noise over all targets alike)"
        )


async def timed(bench: Bench, phase: Any) -> None:
    began = time.perf_counter()
    await phase(bench)
    bench.out.setdefault("phase_seconds", {})[phase.__name__] = time.perf_counter() - began


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
        uvloop.run(run(bench))
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
