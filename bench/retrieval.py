"""Retrieval benchmark (issue 13): quality on the machine's man pages and speed.

    .venv/bin/python bench/retrieval.py [--quick] [--keep-workdir]
    .venv/bin/python bench/retrieval.py --render   # RESULTS.md from bench/results/retrieval.json

Corpus: Debian ``manpages`` + ``manpages-dev`` (and whatever else is in man2/man3), rendered
by groff, each distinct page one text file in one KB. Query = the NAME line's description
with the names dropped; target = that page (ranked by its best chunk among 50).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import git_state, machine
from _retrieval_corpus import load
from _retrieval_quality import DENSE_MODEL, pdf_ingest, quality, scaling
from _retrieval_render import render
from _retrieval_ttft import ttft

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN, END = "<!-- retrieval:begin -->", "<!-- retrieval:end -->"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"pages": 300, "dense": 30, "sizes": [2_000, 10_000], "queries": 50,
                "pdfs": 5, "ttft_rounds": 20, "ttft_pages": 100}  # fmt: skip
    return {"pages": None, "dense": 150, "sizes": [10_000, 100_000], "queries": 200,
            "pdfs": 50, "ttft_rounds": 100, "ttft_pages": 300}  # fmt: skip


def run(quick: bool, workdir: Path) -> dict[str, Any]:
    p = plan(quick)
    started = time.perf_counter()
    out: dict[str, Any] = {
        "machine": machine(), "git": git_state(ROOT), "quick": quick, "plan": p,
        "loadavg_before": loadavg(), "dense_model": DENSE_MODEL,
    }  # fmt: skip
    t = time.perf_counter()
    pages = load(p["pages"])
    out["corpus"] = {
        "pages": len(pages),
        "queries": sum(pg.query is not None for pg in pages),
        "render_s": time.perf_counter() - t,
    }
    print(f"corpus: {out['corpus']}", flush=True)
    out["quality"] = asyncio.run(quality(workdir, pages, p["dense"], 1000))
    print(f"quality done at {time.perf_counter() - started:.0f} s", flush=True)
    out["pdf_ingest"] = asyncio.run(pdf_ingest(workdir, pages, p["pdfs"], 3))
    print(f"pdf done at {time.perf_counter() - started:.0f} s", flush=True)
    out["latency"] = asyncio.run(scaling(workdir, pages, p["sizes"], p["queries"]))
    print(f"latency done at {time.perf_counter() - started:.0f} s", flush=True)
    out["ttft"] = ttft(workdir / "ttft", pages[: p["ttft_pages"]], p["ttft_rounds"])
    out["loadavg_after"] = loadavg()
    out["total_s"] = time.perf_counter() - started
    return out


def write_results_md(text: str) -> None:
    path = HERE / "RESULTS.md"
    current = path.read_text() if path.is_file() else "# Benchmark results\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        current = head + block + rest.split(END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--render", action="store_true")
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args()
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    out_json = results / ("retrieval-quick.json" if args.quick else "retrieval.json")
    if args.render:
        write_results_md(render(json.loads(out_json.read_text())))
        return
    workdir = Path(tempfile.mkdtemp(prefix="flowserve-retrieval-"))
    try:
        r = run(args.quick, workdir)
    finally:
        if not args.keep_workdir:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    out_json.write_text(json.dumps(r, indent=2))
    text = render(r)
    print(text)
    if not args.quick:
        write_results_md(text)


if __name__ == "__main__":
    main()
