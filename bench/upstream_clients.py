"""What one streamed request costs each HTTP client the OpenAI-style adapters could use.

    .venv/bin/python bench/upstream_clients.py [--requests 1000]

One process, sequential requests (one at a time, on one kept-alive connection) to
bench/fake_upstream.py (its own process, 3 tokens per response, no gaps), reading each
streamed body to the end. Per request: wall time and this process's CPU time (user+system).
Clients: the openai SDK's generic ``post`` with the raw response (what the ``openai`` adapter
does), the SDK's own HTTP library (httpx/httpx2) streaming directly, and
``flowserve.providers._http1`` (what ``openai-compatible`` does). Interleaved in blocks of 100
so machine noise hits all alike. Writes bench/results/upstream_clients.json and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _servers import FakeUpstream  # noqa: E402

BODY = {
    "model": "fake",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
HEADERS = {"Authorization": "Bearer sk-fake", "Content-Type": "application/json"}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def openai_sdk(v1: str) -> Callable[[], Awaitable[None]]:
    import openai

    from flowserve.providers.openai import _http_module

    client = openai.AsyncOpenAI(api_key="sk-fake", base_url=v1, max_retries=0)
    response_class = _http_module().Response

    async def one() -> None:
        response = await client.post(
            "/chat/completions", cast_to=response_class, body=BODY, stream=True
        )
        async for _ in response.aiter_bytes():
            pass
        await response.aclose()

    return one


async def sdk_http_library(v1: str) -> Callable[[], Awaitable[None]]:
    from flowserve.providers.openai import _http_module

    client = _http_module().AsyncClient()
    body = orjson.dumps(BODY)

    async def one() -> None:
        url = v1 + "/chat/completions"
        async with client.stream("POST", url, content=body, headers=HEADERS) as response:
            async for _ in response.aiter_bytes():
                pass

    return one


async def flowserve_http1(v1: str) -> Callable[[], Awaitable[None]]:
    from flowserve.providers import _http1

    pool = _http1.Pool(10.0)
    target = _http1.Target(v1 + "/chat/completions", HEADERS)
    body = orjson.dumps(BODY)

    async def one() -> None:
        response = await pool.post(target, b"", body)
        async for _ in response.chunks():
            pass
        response.close()

    return one


CLIENTS = {
    "openai SDK (post, raw body)": openai_sdk,
    "SDK's HTTP library, streaming": sdk_http_library,
    "flowserve _http1": flowserve_http1,
}


async def measure(v1: str, requests: int) -> dict[str, dict[str, float]]:
    ones = {name: await make(v1) for name, make in CLIENTS.items()}
    for one in ones.values():  # connect, import, warm up
        for _ in range(50):
            await one()
    walls: dict[str, list[float]] = {name: [] for name in ones}
    cpus: dict[str, float] = {name: 0.0 for name in ones}
    for _ in range(max(1, requests // 100)):
        for name, one in ones.items():
            c0 = cpu()
            for _ in range(100):
                t0 = time.perf_counter()
                await one()
                walls[name].append(time.perf_counter() - t0)
            cpus[name] += cpu() - c0
    return {
        name: {
            "requests": len(walls[name]),
            "cpu_ms_per_request": 1e3 * cpus[name] / len(walls[name]),
            "wall_ms_p50": 1e3 * statistics.median(walls[name]),
            "wall_ms_p99": 1e3 * sorted(walls[name])[int(len(walls[name]) * 0.99)],
        }
        for name in ones
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fs-upstream-clients-"))
    fake = FakeUpstream(workdir, tokens=3, gap_ms=0).start()
    try:
        results = asyncio.run(measure(fake.v1, args.requests))
    finally:
        fake.stop()
    lines = [
        "| client | requests | CPU ms per request | wall p50 ms | wall p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, row in results.items():
        lines.append(
            f"| {name} | {row['requests']} | {row['cpu_ms_per_request']:.3f} | "
            f"{row['wall_ms_p50']:.3f} | {row['wall_ms_p99']:.3f} |"
        )
    print("\n".join(lines))
    out = HERE / "results" / "upstream_clients.json"
    out.parent.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out.write_text(json.dumps({"date": stamp, "results": results}, indent=2))
    print(f"\nwrote {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
