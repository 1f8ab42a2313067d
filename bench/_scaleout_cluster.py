"""The scale-out benchmark's phases across processes: resume on the run's process and on the
other, a stop sent to the process that does not own the run, and a key revocation and a flow
publish through A until B answers so. Each takes the harness (bench/_scaleout_harness.py)
and writes its figures into ``s.out``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from _report import MS
from _scaleout_client import Plain, legacy_target, open_stream
from _scaleout_harness import Scale
from _scaleout_phases import dist
from _scaleout_servers import FLOW_ID, ORG, PUB_FLOW, Node, pub_flow
from fake_upstream import expected_text

# -- resume ---------------------------------------------------------------------------------

RESUME_TOKENS, RESUME_AFTER, RECONNECT_S = 30, 5, 0.03


async def _resume_once(s: Scale, to: Node) -> dict[str, Any]:
    token = s.token(s.a)
    conn, done = await open_stream(legacy_target(s.a.port, token))
    seen: list[str] = []

    def drop(c: Any) -> None:
        if not seen and c.tokens >= RESUME_AFTER and c.ids:
            seen.append(c.ids[-1])
            c.close()  # the client loses its connection

    conn.on_frame = drop
    first = await asyncio.wait_for(done, 30)
    if not seen:
        return {"error": f"first stream: {first.error or 'ended before the drop'}"}
    await asyncio.sleep(RECONNECT_S)  # the client's reconnect delay: the run goes on meanwhile
    conn2, done2 = await open_stream(legacy_target(to.port, token, last_event_id=seen[0]))
    try:
        resumed = await asyncio.wait_for(done2, 30)
    except TimeoutError:
        conn2.close()
        return {"error": "resumed stream timed out"}
    if resumed.error or resumed.text != expected_text(RESUME_TOKENS):
        return {"error": f"resumed: {resumed.error or f'wrong text ({len(resumed.text)} chars)'}"}
    return {
        "head_ms": (conn2.head_at - resumed.start) * MS,
        "first_token_ms": (resumed.first - resumed.start) * MS,
    }


async def phase_resume(s: Scale) -> None:
    samples, workers = s.plan["resume_samples"], 4
    print(
        f"\nresume: {samples} per condition, {workers} at a time: a stream on A dropped after "
        f"{RESUME_AFTER} tokens ({RESUME_TOKENS} tokens {s.gap_ms:g} ms apart), resumed "
        f"{RECONNECT_S * 1000:.0f} ms later on A or on B",
        flush=True,
    )
    s.fake.control(gap_ms=s.gap_ms, tokens=RESUME_TOKENS)
    conditions = {"same process (A)": s.a, "other process (B)": s.b}
    got: dict[str, list[dict[str, Any]]] = {c: [] for c in conditions}
    plan = [c for _ in range(samples) for c in conditions]

    async def worker(k: int) -> None:
        for i in range(k, len(plan), workers):
            got[plan[i]].append(await _resume_once(s, conditions[plan[i]]))

    await asyncio.gather(*(worker(k) for k in range(workers)))
    out: dict[str, Any] = {}
    for condition, rows in got.items():
        ok = [r for r in rows if "error" not in r]
        errors: dict[str, int] = {}
        for r in rows:
            if "error" in r:
                errors[r["error"][:120]] = errors.get(r["error"][:120], 0) + 1
        out[condition] = {
            "samples": len(rows),
            "ok": len(ok),
            "errors": errors,
            "to_head_ms": dist([r["head_ms"] for r in ok]),
            "to_first_resumed_token_ms": dist([r["first_token_ms"] for r in ok]),
        }
        d = out[condition]["to_first_resumed_token_ms"]
        print(
            f"  {condition:18} ok {len(ok)}/{len(rows)} first resumed byte p50 {d['p50']:.2f} "
            f"p99 {d['p99']:.2f} ms | errors {errors or 0}",
            flush=True,
        )
    s.out["resume"] = out


# -- stop -----------------------------------------------------------------------------------

STOP_TOKENS = 200


async def _stop_once(s: Scale, plain: Plain) -> dict[str, Any]:
    token = s.token(s.a)
    conn, done = await open_stream(legacy_target(s.a.port, token))
    started = asyncio.Event()

    def first(c: Any) -> None:
        if c.tokens >= 1 and c.ids:
            started.set()

    conn.on_frame = first
    try:
        await asyncio.wait_for(started.wait(), 10)
    except TimeoutError:
        conn.close()
        return {"error": "no first token"}
    run_id = conn.ids[-1].split(":", 1)[0]
    path = f"/inference/v0/stop/{ORG}/{FLOW_ID}?run_id={run_id}"
    stopping = asyncio.create_task(plain.request("POST", path, s.private(s.a)))
    result = await asyncio.wait_for(done, 30)
    status, body, sent, answered = await stopping
    if status != 200:
        return {"error": f"stop answered {status}: {body[:100]!r}"}
    if len(result.text) >= len(expected_text(STOP_TOKENS)):
        return {"error": "the stream ran to its end"}
    return {"stream_end_ms": (result.end - sent) * MS, "answer_ms": (answered - sent) * MS}


async def phase_stop(s: Scale) -> None:
    samples = s.plan["stop_samples"]
    print(
        f"\nstop: {samples} per condition, a run on A ({STOP_TOKENS} tokens {s.gap_ms:g} ms "
        "apart) stopped after its first token through B or through A",
        flush=True,
    )
    s.fake.control(gap_ms=s.gap_ms, tokens=STOP_TOKENS)
    plains = {"sent to B (other process)": Plain(s.b.port), "sent to A (owner)": Plain(s.a.port)}
    got: dict[str, list[dict[str, Any]]] = {c: [] for c in plains}
    try:
        for _ in range(samples):
            for condition, plain in plains.items():
                got[condition].append(await _stop_once(s, plain))
                await asyncio.sleep(0.03)
    finally:
        for plain in plains.values():
            plain.close()
    out: dict[str, Any] = {}
    for condition, rows in got.items():
        ok = [r for r in rows if "error" not in r]
        errors: dict[str, int] = {}
        for r in rows:
            if "error" in r:
                errors[r["error"][:120]] = errors.get(r["error"][:120], 0) + 1
        out[condition] = {
            "samples": len(rows),
            "ok": len(ok),
            "errors": errors,
            "to_stream_end_ms": dist([r["stream_end_ms"] for r in ok]),
            "to_stop_answer_ms": dist([r["answer_ms"] for r in ok]),
        }
        d, a = out[condition]["to_stream_end_ms"], out[condition]["to_stop_answer_ms"]
        print(
            f"  {condition:26} ok {len(ok)}/{len(rows)} stream end p50 {d['p50']:.1f} p99 "
            f"{d['p99']:.1f} ms | stop answered p50 {a['p50']:.1f} p99 {a['p99']:.1f} ms"
            f" | errors {errors or 0}",
            flush=True,
        )
    s.out["stop"] = out


# -- invalidations --------------------------------------------------------------------------


async def _poll_until(
    plain: Plain, path: str, token: str, done: Any, limit_s: float = 5.0
) -> tuple[float, float, int] | None:
    """Poll ``path`` on one connection until ``done(status, body)``; returns (when the
    answer that said so came, its round trip, polls), or None after ``limit_s``."""
    deadline = time.perf_counter() + limit_s
    polls = 0
    while time.perf_counter() < deadline:
        status, body, sent, answered = await plain.request("GET", path, token)
        polls += 1
        if done(status, body):
            return answered, answered - sent, polls
    return None


async def phase_invalidations(s: Scale) -> None:
    keys = s.a.deployment.keys
    assert keys is not None
    s.fake.control(gap_ms=0, tokens=s.tokens)
    on_a, on_b = Plain(s.a.port), Plain(s.b.port)
    revoke: list[dict[str, float]] = []
    publish: list[dict[str, float]] = []
    problems: list[str] = []
    try:
        n = s.plan["revoke_samples"]
        print(f"\nkey revocation through A, seen by B: {n} keys", flush=True)
        for key_id, token in keys.revocable[:n]:
            status, *_ = await on_b.request("GET", "/v1/models", token)  # now cached on B
            if status != 200:
                problems.append(f"key {key_id} refused by B before revocation: {status}")
                continue
            poll = asyncio.create_task(
                _poll_until(on_b, "/v1/models", token, lambda st, _b: st == 401)
            )
            await asyncio.sleep(0.005)
            status, body, sent, answered = await on_a.request(
                "DELETE", f"/v1/orgs/{ORG}/keys/{key_id}", keys.private
            )
            seen = await poll
            if status != 200 or seen is None:
                problems.append(f"revoke {key_id}: {status} {body[:80]!r}, seen {seen}")
                continue
            revoke.append(
                {
                    "seen_ms": (seen[0] - sent) * MS,
                    "answer_ms": (answered - sent) * MS,
                    "poll_ms": seen[1] * MS,
                }
            )
        n = s.plan["publish_samples"]
        print(f"flow publish through A, seen by B: {n} publishes", flush=True)
        path = f"/v1/orgs/{ORG}/flows/{PUB_FLOW}/interface"
        for i in range(1, n + 1):
            status, body, *_ = await on_b.request("GET", path, keys.public)  # cached on B
            if status != 200:
                problems.append(f"interface on B: {status} {body[:80]!r}")
                continue
            version = orjson.loads(body)["version"]
            poll = asyncio.create_task(
                _poll_until(
                    on_b,
                    path,
                    keys.public,
                    lambda st, b, v=version: st == 200 and orjson.loads(b)["version"] > v,
                )
            )
            await asyncio.sleep(0.005)
            status, body, sent, answered = await on_a.request(
                "POST",
                f"/v1/orgs/{ORG}/flows",
                keys.private,
                pub_flow(1000 + i).encode(),
                "application/yaml",
            )
            seen = await poll
            if status != 201 or seen is None:
                problems.append(f"publish {i}: {status} {body[:80]!r}, seen {seen}")
                continue
            publish.append(
                {
                    "seen_ms": (seen[0] - sent) * MS,
                    "answer_ms": (answered - sent) * MS,
                    "poll_ms": seen[1] * MS,
                }
            )
    finally:
        on_a.close()
        on_b.close()
    out: dict[str, Any] = {"problems": problems}
    for name, rows in (("key revocation", revoke), ("flow publish", publish)):
        out[name] = {
            "ok": len(rows),
            "seen_by_b_ms": dist([r["seen_ms"] for r in rows]),
            "answer_from_a_ms": dist([r["answer_ms"] for r in rows]),
            "poll_round_trip_ms": dist([r["poll_ms"] for r in rows]),
        }
        d = out[name]["seen_by_b_ms"]
        print(
            f"  {name:15} ok {len(rows)} seen by B p50 {d['p50']:.1f} p99 {d['p99']:.1f} max "
            f"{d['max']:.1f} ms (A answered p50 {out[name]['answer_from_a_ms']['p50']:.1f} ms)",
            flush=True,
        )
    for p in problems:
        print(f"  problem: {p}", flush=True)
    s.out["invalidations"] = out
