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
from _report import table
from _retrieval_corpus import load
from _retrieval_quality import DENSE_MODEL, pdf_ingest, quality, scaling
from _retrieval_ttft import ttft

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN, END = "<!-- retrieval:begin -->", "<!-- retrieval:end -->"
P99_TARGET_MS = 20.0


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


def render(r: dict[str, Any]) -> str:
    q, m = r["quality"], r["machine"]
    sub = q["subset"]
    dense = q["dense_ingest"]
    metrics = ("recall@1", "recall@5", "mrr", "query_ms_mean")
    full = q["full_bm25"]
    rows = [["BM25 (FTS5), full corpus", full["queries"], q["text_ingest"]["pages"]]
            + [full[k] for k in metrics]]  # fmt: skip
    names = {"keyword": "BM25", "semantic": "dense", "hybrid": "hybrid (RRF)"}
    for s, label in names.items():
        e = sub[s]
        rows.append([f"{label}, subset", e["queries"], dense["pages"]]
                    + [e[k] for k in ("recall@1", "recall@5", "mrr", "query_ms_mean")])  # fmt: skip
    ti, pi = q["text_ingest"], r["pdf_ingest"]
    lat = r["latency"]
    t = r["ttft"]
    lines = [
        "## Retrieval (`bench/retrieval.py`)",
        "",
        f"Run {m['date']} on {m['nproc']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, "
        f"Linux {m['kernel']}; total {r['total_s']:.0f} s. flowserve at commit {r['git']['commit']}"
        f" ({r['git']['src_dirty_files']} files under src/ uncommitted). /proc/loadavg before: "
        f"`{r['loadavg_before']}`, after: `{r['loadavg_after']}` (other engineers share the CPU)."
        " Reproduce: `.venv/bin/python bench/retrieval.py`.",
        "",
        f"Corpus: the man pages of sections 2 and 3 on this machine (Debian `manpages`, "
        f"`manpages-dev`, and the perl/X11 pages installed there), rendered with "
        f"`groff -man -Tutf8`, links and copies dropped: {r['corpus']['pages']} distinct pages, "
        f"each one `.txt` file in one KB (default chunking: sentence, 1500/500 chars). Query = "
        f"the NAME description with the names dropped (`open, openat, creat - open and possibly "
        f"create a file` → `open and possibly create a file`); the {r['corpus']['queries']} pages "
        f"whose description no other page shares are queries, the rest only distractors. A "
        f"page's rank = the rank of its best chunk among the 50 returned. The description is in "
        f"the page's own NAME section, so this rewards exact wording: BM25's home ground.",
        "",
        f"Dense: `{r['dense_model']}` (SmolLM2-135M mean-pooled, a chat model, not an embedding "
        f"model) is ~0.2 s a text here, so all three strategies are compared on a fixed random "
        f"subset of {dense['pages']} query pages, each cut to its first {dense['chars_per_page']} "
        f"characters (≈ 256 tokens, one chunk each); embedding them took {dense['seconds']:.0f} s.",
        "",
        table(
            [
                "strategy, corpus",
                "queries",
                "pages in KB",
                "recall@1",
                "recall@5",
                "MRR",
                "mean query ms",
            ],
            rows,
        ),
        "",
        "### Speed",
        "",
        table(
            [
                "ingestion (upload + parse + chunk + index, in-process, one at a time)",
                "files",
                "pages",
                "MiB",
                "chunks",
                "s",
                "pages/s",
            ],
            [
                [
                    "text (man pages)",
                    ti["pages"],
                    ti["pages"],
                    ti["mib"],
                    ti["chunks"],
                    ti["seconds"],
                    ti["pages_per_s"],
                ],
                [
                    "PDF (fpdf2, 3 man pages each)",
                    pi["files"],
                    pi["pdf_pages"],
                    pi["mib"],
                    pi["chunks"],
                    pi["seconds"],
                    pi["pages_per_s"],
                ],
            ],
        ),
        "",
        table(
            [
                "keyword search (FTS5 BM25, top_k 10, `Index.search`)",
                "queries",
                "p50 ms",
                "p99 ms",
                "max ms",
                f"p99 ≤ {P99_TARGET_MS:.0f} ms",
            ],
            [
                [
                    f"{x['chunks']:,} chunks",
                    x["queries"],
                    x["p50_ms"],
                    x["p99_ms"],
                    x["max_ms"],
                    "**PASS**" if x["p99_ms"] <= P99_TARGET_MS else "**MISS**",
                ]
                for x in lat
            ],
        ),
        "",
        "The first size is the man pages ingested through the service; larger sizes write the "
        "same chunks again as new files through the store's own `write_index` (same texts, so "
        "term statistics are the corpus's repeated). Queries: the man descriptions, sampled.",
        "",
        table(
            ["TTFT, real server, `/stream_exported_flow`", "p50 ms", "p99 ms"],
            [
                [
                    "in-0 → llm-0 (scripted echo)",
                    t["without_kb"]["p50_ms"],
                    t["without_kb"]["p99_ms"],
                ],
                [
                    f"in-0 → kb-0 (keyword, {t['kb_pages']} man pages) → llm-0",
                    t["with_kb"]["p50_ms"],
                    t["with_kb"]["p99_ms"],
                ],
                ["**added by the knowledge node**", t["added_p50_ms"], t["added_p99_ms"]],
            ],
        ),
        "",
        f"TTFT: `python -m flowserve serve` (bench/_bench_server.py), {t['rounds']} rounds, the "
        "two flows alternating, one keep-alive httpx client; from the request sent to the first "
        "`data:` frame carrying `out-0`.",
    ]
    return "\n".join(lines)


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
