"""The soak test's clients: each kind loops until the deadline, sending one kind of traffic
and checking that the answer is the one a user should get. Loopback only."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

TIMEOUT = httpx.Timeout(30.0)
FLOWS = {
    # echo: streams its prompt back word by word; tpl: a template over it; both outputs.
    "soak-echo": """
id: soak-echo
inputs: {in-0: {default: "hello soak"}}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.002", prompt: "{in-0}"}
  llm-1: {type: llm, provider: scripted, model: "echo?delay=0.003", prompt: "again {in-0}"}
  tpl: {type: template, template: "[{llm-0}] [{llm-1}]"}
outputs: {out-0: llm-0, out-1: tpl}
""",
    "soak-slow": """
id: soak-slow
inputs: {in-0: {default: "slow words"}}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.05&repeat=40", prompt: "{in-0}"}
outputs: {out-0: llm-0}
""",
    "soak-fail": """
id: soak-fail
inputs: {in-0: {default: "a b c d e f"}}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.002&fail_after=3", prompt: "{in-0}"}
outputs: {out-0: llm-0}
""",
    "soak-local": """
id: soak-local
inputs: {in-0: {default: "Say hello."}}
nodes:
  llm-0: {type: llm, provider: local, prompt: "{in-0}", max_tokens: 12, temperature: 0}
outputs: {out-0: llm-0}
""",
}


@dataclass
class Stats:
    statuses: Counter = field(default_factory=Counter)  # (kind, status) -> count
    unexpected: list[str] = field(default_factory=list)  # answers a user should not get
    errors: Counter = field(default_factory=Counter)  # transport errors by kind
    ttfb: list[float] = field(default_factory=list)  # good streams: seconds to first byte
    run_ids: list[tuple[float, str, str]] = field(default_factory=list)  # (when, flow, run id)
    late_records: int = 0  # run records readable only on a second try
    local_answers: dict[str, str] = field(default_factory=dict)  # flow -> its first answer

    def note(self, kind: str, status: int) -> None:
        self.statuses[(kind, status)] += 1

    def wrong(self, kind: str, what: str) -> None:
        if len(self.unexpected) < 50:
            self.unexpected.append(f"{kind}: {what}"[:300])


@dataclass
class Target:
    base_url: str
    org: str
    public_key: str
    private_key: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.public_key}"}


def _words(rng: random.Random) -> str:
    return " ".join(
        rng.choice(["alpha", "beta", "γάμμα", "δ", "{in-0}", "{{x}}"])
        for _ in range(rng.randint(1, 8))
    )


async def good_legacy(
    client: httpx.AsyncClient, t: Target, stats: Stats, rng: random.Random
) -> None:
    text = _words(rng)
    url = f"/stream_exported_flow?flow_id=soak-echo&org={t.org}"
    started = time.perf_counter()
    async with client.stream("POST", url, json={"in-0": text}, headers=t.auth()) as r:
        first = None
        body = b""
        async for chunk in r.aiter_bytes():
            first = first or time.perf_counter()
            body += chunk
    stats.note("good-legacy", r.status_code)
    if r.status_code != 200:
        return stats.wrong("good-legacy", f"status {r.status_code}")
    stats.ttfb.append((first or time.perf_counter()) - started)
    messages = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    last = json.loads(messages[-1])
    if last != {"out-0": text, "out-1": f"[{text}] [again {text}]"}:
        stats.wrong("good-legacy", f"final message {last!r} for {text!r}")


async def good_v0(client: httpx.AsyncClient, t: Target, stats: Stats, rng: random.Random) -> None:
    text = _words(rng)
    url = f"/inference/v0/stream/{t.org}/soak-echo"
    started = time.perf_counter()
    async with client.stream("POST", url, json={"in-0": text}, headers=t.auth()) as r:
        lines = []
        async for line in r.aiter_lines():
            if not lines:
                stats.ttfb.append(time.perf_counter() - started)
            if line:
                lines.append(json.loads(line))
    stats.note("good-v0", r.status_code)
    if r.status_code != 200:
        return stats.wrong("good-v0", f"status {r.status_code}")
    joined = "".join(frame["outputs"]["out-0"] for frame in lines)
    if lines[-1]["state"] != "COMPLETED" or joined != text:
        stats.wrong("good-v0", f"state {lines[-1]['state']}, text {joined!r} for {text!r}")
    stats.run_ids.append((time.monotonic(), "soak-echo", lines[-1]["run_id"]))


async def good_blocking(
    client: httpx.AsyncClient, t: Target, stats: Stats, rng: random.Random
) -> None:
    text = _words(rng)
    if rng.random() < 0.5:
        r = await client.post(
            f"/run_deployed_flow?flow_id=soak-echo&org={t.org}",
            json={"in-0": text},
            headers=t.auth(),
        )
        ok = r.status_code == 200 and r.json().get("out-0") == text
    else:
        r = await client.post(
            f"/inference/v0/run/{t.org}/soak-echo", json={"in-0": text}, headers=t.auth()
        )
        ok = r.status_code == 200 and r.json()["state"] == "COMPLETED"
        if ok:
            stats.run_ids.append((time.monotonic(), "soak-echo", r.json()["run_id"]))
    stats.note("good-blocking", r.status_code)
    if not ok:
        stats.wrong("good-blocking", f"status {r.status_code}: {r.text[:100]}")


async def failing_flow(
    client: httpx.AsyncClient, t: Target, stats: Stats, rng: random.Random
) -> None:
    r = await client.post(f"/inference/v0/stream/{t.org}/soak-fail", json={}, headers=t.auth())
    stats.note("failing-flow", r.status_code)
    last = json.loads(r.text.splitlines()[-1]) if r.status_code == 200 else {}
    if last.get("state") != "FAILED" or "scripted failure" not in (last.get("error") or ""):
        stats.wrong("failing-flow", f"status {r.status_code}, last frame {str(last)[:120]}")


MALFORMED = [
    b"{",
    b"[]",
    b'"x"',
    b"\xff\xfe",
    b'{"in-0": 5}',
    b'{"nope": "x"}',
    b'{"user_id": "a b"}',
    b'{"in-0": {"a": 1}}',
    b"\x0b",
    b"[" * 2000 + b"]" * 2000,
    b'{"in-0": "\xc3"}',
]


async def malformed(client: httpx.AsyncClient, t: Target, stats: Stats, rng: random.Random) -> None:
    noise = os.urandom(rng.randint(1, 200))
    if not noise.strip(b" \t\r\n"):
        noise = b"x" + noise  # JSON whitespace alone is an empty body, which is valid
    body = rng.choice([*MALFORMED, noise])
    route = rng.choice(
        [
            f"/inference/v0/stream/{t.org}/soak-echo",
            f"/stream_exported_flow?flow_id=soak-echo&org={t.org}",
        ]
    )
    r = await client.post(
        route, content=body, headers={**t.auth(), "Content-Type": "application/json"}
    )
    stats.note("malformed", r.status_code)
    if r.status_code != 422:
        stats.wrong("malformed", f"status {r.status_code} for {body[:40]!r}")


async def oversized(client: httpx.AsyncClient, t: Target, stats: Stats, rng: random.Random) -> None:
    which = rng.choice(["body", "url", "headers"])
    url = f"/inference/v0/run/{t.org}/soak-echo"
    headers = {**t.auth(), "Content-Type": "application/json"}
    body = b'{"in-0": "x"}'
    expected = {"body": 413, "url": 414, "headers": 431}[which]
    if which == "body":
        body = b'{"in-0": "' + b"x" * (1_100_000) + b'"}'
    elif which == "url":
        url += "?pad=" + "x" * 5000
    else:
        headers["X-Padding"] = "x" * 40_000
    r = await client.post(url, content=body, headers=headers)
    stats.note("oversized", r.status_code)
    if r.status_code != expected:
        stats.wrong("oversized", f"{which}: status {r.status_code}, expected {expected}")


async def wrong_key(client: httpx.AsyncClient, t: Target, stats: Stats, rng: random.Random) -> None:
    key = rng.choice(["fs_nosuchkey_000000", "garbage", t.public_key[:-1] + "x", ""])
    url = rng.choice(
        [f"/inference/v0/stream/{t.org}/soak-echo", "/inference/v0/run/other-org/soak-echo"]
    )
    r = await client.post(url, json={}, headers={"Authorization": f"Bearer {key}"} if key else {})
    stats.note("wrong-key", r.status_code)
    if r.status_code != 401:
        stats.wrong("wrong-key", f"status {r.status_code}")


async def disconnecting(
    client: httpx.AsyncClient, t: Target, stats: Stats, rng: random.Random
) -> None:
    """Reads a few frames of a long run, then hangs up: the run must end CANCELLED."""
    url = f"/inference/v0/stream/{t.org}/soak-slow"
    async with client.stream("POST", url, json={}, headers=t.auth()) as r:
        stats.note("disconnecting", r.status_code)
        if r.status_code != 200:
            return stats.wrong("disconnecting", f"status {r.status_code}")
        frames = 0
        async for line in r.aiter_lines():
            if frames == 0:
                run_id = json.loads(line)["run_id"]
                stats.run_ids.append((time.monotonic(), "soak-slow", run_id))
            frames += 1
            if frames >= rng.randint(1, 6):
                break  # leaving the block closes the connection mid-stream


async def stopping(client: httpx.AsyncClient, t: Target, stats: Stats, rng: random.Random) -> None:
    """Starts a long run and stops it through the API: the stream ends CANCELLED."""
    url = f"/inference/v0/stream/{t.org}/soak-slow"
    async with client.stream("POST", url, json={}, headers=t.auth()) as r:
        lines = r.aiter_lines()
        first = json.loads(await anext(lines))
        stop = await client.post(
            f"/inference/v0/stop/{t.org}/soak-slow?run_id={first['run_id']}", headers=t.auth()
        )
        stats.note("stopping", stop.status_code)
        last = first
        async for line in lines:
            last = json.loads(line)
    if stop.status_code != 200 or last.get("state") != "CANCELLED":
        stats.wrong("stopping", f"stop {stop.status_code}, last state {last.get('state')}")


async def reading_records(
    client: httpx.AsyncClient, t: Target, stats: Stats, rng: random.Random
) -> None:
    # Runs seen over a second ago. The RUNNING record is written beside the run, not before
    # its first frame, so under load a new run may not be readable at once: a 404 is asked
    # again after a pause, and counts against the server only if it persists. (The end of
    # the soak also checks that every run a client saw has its record.)
    settled = [r for r in stats.run_ids[-300:] if time.monotonic() - r[0] > 1.0]
    if not settled:
        await asyncio.sleep(0.1)
        return
    seen, flow, run_id = rng.choice(settled)
    url = f"/inference/v0/run/{t.org}/{flow}/metadata?run_id={run_id}"
    r = await client.get(url, headers=t.auth(t.private_key))
    if r.status_code == 404:
        await asyncio.sleep(3.0)
        r = await client.get(url, headers=t.auth(t.private_key))
        stats.late_records += r.status_code == 200
    stats.note("records", r.status_code)
    if r.status_code != 200:
        age = time.monotonic() - seen
        stats.wrong("records", f"status {r.status_code} for {flow} run {run_id}, {age:.1f}s old")


async def local_model(
    client: httpx.AsyncClient, t: Target, stats: Stats, rng: random.Random
) -> None:
    r = await client.post(f"/inference/v0/run/{t.org}/soak-local", json={}, headers=t.auth())
    stats.note("local-model", r.status_code)
    if r.status_code != 200 or r.json()["state"] != "COMPLETED":
        stats.wrong("local-model", f"status {r.status_code}: {r.text[:100]}")
        return
    # The same request at temperature 0, under load: the same answer every time (whatever
    # the words are on this CPU).
    answer = r.json()["outputs"]["out-0"]
    first = stats.local_answers.setdefault("soak-local", answer)
    if answer != first:
        stats.wrong("local-model", f"answer changed: {first[:40]!r} then {answer[:40]!r}")


# kind -> (client function, how many run at once)
MIX = {
    "good-legacy": (good_legacy, 3),
    "good-v0": (good_v0, 3),
    "good-blocking": (good_blocking, 2),
    "failing-flow": (failing_flow, 1),
    "malformed": (malformed, 1),
    "oversized": (oversized, 1),
    "wrong-key": (wrong_key, 1),
    "disconnecting": (disconnecting, 2),
    "stopping": (stopping, 1),
    "records": (reading_records, 1),
}
