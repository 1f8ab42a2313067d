"""Embedded model: flowserve versus llama-cpp-python called directly, same prompt, same machine.

    .venv/bin/python bench/local_model.py [--rounds 5] [--max-tokens 128]

Runs are interleaved (direct, flowserve, direct, flowserve, ...) so machine noise hits both.
Measures, for one stream: time to first byte (HTTP), time to first token, and generation
tokens/s ((n - 1) / (t_last - t_first)); for 4 concurrent requests: aggregate tokens/s.
The flowserve server runs in its own process (uvicorn, uvloop, httptools) with the same
llama.cpp settings (n_threads = cores, n_ctx 2048, one context). Writes
bench/results/local_model.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench_server import BenchServer  # noqa: E402

PROMPT = "Explain in a few sentences why the sky is blue."
SYSTEM = "You are a helpful assistant."


def flow_yaml(max_tokens: int) -> str:
    return f"""
id: bench-local
inputs: {{in-0: {{}}}}
nodes:
  llm-0:
    type: llm
    provider: local
    system: "{SYSTEM}"
    prompt: "{{in-0}}"
    max_tokens: {max_tokens}
    temperature: 0
outputs: {{out-0: llm-0}}
"""


def direct_once(llm, max_tokens: int) -> dict:
    start = time.perf_counter()
    stamps: list[float] = []
    for chunk in llm.create_chat_completion(
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        stream=True,
        max_tokens=max_tokens,
        temperature=0,
    ):
        if chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
    n = len(stamps)
    return {
        "ttft_ms": (stamps[0] - start) * 1000,
        "tokens": n,
        "tok_s": (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else 0.0,
        "total_s": time.perf_counter() - start,
    }


async def flowserve_once(client: httpx.AsyncClient, server: BenchServer) -> dict:
    url = f"{server.base_url}/inference/v0/stream/{server.org}/bench-local"
    start = time.perf_counter()
    first_byte = None
    stamps: list[float] = []
    usage = None
    async with client.stream("POST", url, json={"in-0": PROMPT}, headers=server.auth) as r:
        async for line in r.aiter_lines():
            now = time.perf_counter()
            if first_byte is None:
                first_byte = now
            if not line:
                continue
            frame = json.loads(line)
            if frame["outputs"].get("out-0"):
                stamps.append(now)
            if frame["state"] != "RUNNING":
                usage = frame["metadata"]["usage"]["llm-0"]
    n = usage["completion_tokens"] if usage else len(stamps)
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0
    return {
        "ttfb_ms": ((first_byte or start) - start) * 1000,
        "ttft_ms": (stamps[0] - start) * 1000 if stamps else None,
        "tokens": n,
        "frames": len(stamps),
        # frames can carry several tokens when coalesced; rate uses the token count
        "tok_s": (n - 1) / span if span else 0.0,
        "total_s": time.perf_counter() - start,
    }


async def flowserve_concurrent(server: BenchServer, k: int) -> dict:
    async with httpx.AsyncClient(timeout=300) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(flowserve_once(client, server) for _ in range(k)))
    wall = time.perf_counter() - start
    return {"tokens": sum(r["tokens"] for r in results), "wall_s": wall}


def direct_concurrent(llm, k: int, max_tokens: int) -> dict:
    # One llama.cpp context cannot be shared, so direct use serialises the k requests, as
    # flowserve does with its default of one context.
    start = time.perf_counter()
    tokens = sum(direct_once(llm, max_tokens)["tokens"] for _ in range(k))
    return {"tokens": tokens, "wall_s": time.perf_counter() - start}


def med(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    from flowserve.providers import llama_loader
    from flowserve.providers.local import bundled_model_path

    llm = llama_loader.load(
        bundled_model_path(),
        n_ctx=2048,
        n_threads=os.cpu_count() or 2,
        seed=0,
        verbose=False,
    )
    with tempfile.TemporaryDirectory() as tmp, BenchServer(Path(tmp)) as server:
        server.publish(flow_yaml(args.max_tokens))
        direct: list[dict] = []
        served: list[dict] = []
        direct_once(llm, 8)  # warm both sides once
        asyncio.run(_one(server))
        for _ in range(args.rounds):
            direct.append(direct_once(llm, args.max_tokens))
            served.append(asyncio.run(_one(server)))
        conc_direct = direct_concurrent(llm, 4, args.max_tokens)
        conc_served = asyncio.run(flowserve_concurrent(server, 4))

    d_rate, f_rate = med([r["tok_s"] for r in direct]), med([r["tok_s"] for r in served])
    d4 = conc_direct["tokens"] / conc_direct["wall_s"]
    f4 = conc_served["tokens"] / conc_served["wall_s"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "one_stream": {
            "direct_ttft_ms_p50": med([r["ttft_ms"] for r in direct]),
            "flowserve_ttfb_ms_p50": med([r["ttfb_ms"] for r in served]),
            "flowserve_ttft_ms_p50": med([r["ttft_ms"] for r in served]),
            "direct_tok_s_p50": d_rate,
            "flowserve_tok_s_p50": f_rate,
            "ratio": f_rate / d_rate,
            "tokens_per_run": med([r["tokens"] for r in served]),
        },
        "four_concurrent": {"direct_tok_s": d4, "flowserve_tok_s": f4, "ratio": f4 / d4},
        "raw": {"direct": direct, "flowserve": served},
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "local_model.json").write_text(json.dumps(result, indent=2))
    one, four = result["one_stream"], result["four_concurrent"]
    print(
        f"\nEmbedded model (SmolLM2-135M Q4_1), {result['machine']}, {args.rounds} rounds, "
        f"{args.max_tokens} max tokens, interleaved\n"
    )
    print("| measure | direct llama-cpp-python | through flowserve | ratio |")
    print("|---|---|---|---|")
    print(f"| time to first byte, p50 | - | {one['flowserve_ttfb_ms_p50']:.1f} ms | - |")
    print(
        f"| time to first token, p50 | {one['direct_ttft_ms_p50']:.1f} ms | "
        f"{one['flowserve_ttft_ms_p50']:.1f} ms | - |"
    )
    print(f"| tokens/s, 1 stream, p50 | {d_rate:.1f} | {f_rate:.1f} | {one['ratio']:.3f} |")
    print(f"| tokens/s, 4 concurrent (aggregate) | {d4:.1f} | {f4:.1f} | {four['ratio']:.3f} |")


async def _one(server: BenchServer) -> dict:
    async with httpx.AsyncClient(timeout=300) as client:
        return await flowserve_once(client, server)


if __name__ == "__main__":
    main()
