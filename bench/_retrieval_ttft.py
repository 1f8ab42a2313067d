"""What a ``knowledge_base`` node adds to a flow's time to first token, through a real
server (``python -m flowserve serve``, bench/_bench_server.py, FLOWSERVE_TEST_PROVIDERS=true):
in-0 → kb-0 (keyword, over the man pages) → llm-0 (scripted ``echo``, prompt
``{kb-0} {in-0}``) against the same flow without kb-0 (prompt ``{in-0}``), interleaved."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from _bench_server import BenchServer
from _retrieval_corpus import Page

WITH_KB = """
id: with-kb
inputs: {{in-0: {{}}}}
nodes:
  kb-0: {{type: knowledge_base, knowledge_base_ids: ["{kb_id}"], query: "{{in-0}}",
         query_strategy: keyword}}
  llm-0: {{type: llm, provider: scripted, model: echo, prompt: "{{kb-0}} {{in-0}}"}}
outputs: {{out-0: llm-0}}
"""
WITHOUT = """
id: without-kb
inputs: {in-0: {}}
nodes:
  llm-0: {type: llm, provider: scripted, model: echo, prompt: "{in-0}"}
outputs: {out-0: llm-0}
"""


def _ttft(client: httpx.Client, server: BenchServer, flow: str, query: str) -> float:
    t = time.perf_counter()
    with client.stream(
        "POST",
        f"{server.base_url}/stream_exported_flow",
        params={"flow_id": flow, "org": server.org},
        json={"in-0": query},
        headers=server.auth,
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{flow}: HTTP {r.status_code} {r.read()[:200]!r}")
        first, last = None, ""
        for line in r.iter_lines():  # read to the stream's end
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("out-0"):  # the first token: earlier messages may be empty
                last = message["out-0"]
                if first is None:
                    first = time.perf_counter() - t
    if first is None:
        raise RuntimeError(f"{flow}: no token")
    if flow == "with-kb" and "[1] " not in last:  # the echo holds the node's numbered context
        raise RuntimeError(f"{flow}: the knowledge node found nothing: {last[:200]}")
    return first


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ttft(tmp: Path, pages: list[Page], rounds: int) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    with BenchServer(tmp) as server, httpx.Client(timeout=60) as client:
        private = {"Authorization": f"Bearer {server.private_key}"}
        made = client.post(f"{server.base_url}/v1/knowledge-bases", json={"name": "man"},
                           headers=private)  # fmt: skip
        made.raise_for_status()
        kb_id = made.json()["knowledge_base_id"]
        ids = []
        for page in pages:
            sent = client.post(
                f"{server.base_url}/v1/knowledge-bases/{kb_id}/resources",
                files={"file": (page.name + ".txt", page.text.encode())},
                headers=private,
            )
            sent.raise_for_status()
            ids.append(sent.json()["resource_id"])
        deadline = time.monotonic() + 300
        for rid in ids:
            while True:
                got = client.get(
                    f"{server.base_url}/v1/knowledge-bases/{kb_id}/resources/{rid}",
                    headers=private,
                ).json()
                if got["status"] == "indexed":
                    break
                if got["status"] == "error" or time.monotonic() > deadline:
                    raise RuntimeError(f"file not indexed: {got}")
                time.sleep(0.05)
        server.publish(WITH_KB.format(kb_id=kb_id))
        server.publish(WITHOUT)
        queries = [p.query for p in pages if p.query is not None]
        for q in queries[:5]:
            _ttft(client, server, "with-kb", q)
            _ttft(client, server, "without-kb", q)
        with_kb, without = [], []
        for i in range(rounds):
            q = queries[i % len(queries)]
            order = ("with-kb", "without-kb") if i % 2 else ("without-kb", "with-kb")
            for flow in order:
                (with_kb if flow == "with-kb" else without).append(
                    1000 * _ttft(client, server, flow, q)
                )
    row: dict[str, Any] = {
        "rounds": rounds,
        "kb_pages": len(pages),
        "route": "/stream_exported_flow",
    }
    for name, values in (("with_kb", with_kb), ("without_kb", without)):
        row[name] = {"p50_ms": _pct(values, 0.5), "p99_ms": _pct(values, 0.99)}
    row["added_p50_ms"] = row["with_kb"]["p50_ms"] - row["without_kb"]["p50_ms"]
    row["added_p99_ms"] = row["with_kb"]["p99_ms"] - row["without_kb"]["p99_ms"]
    return row
