"""The scale-out results as markdown: the run's conditions, the targets (PASS/MISS), then one
table per question of issue 12, and what the processes' CPU says limits 1 → 2 processes."""

from __future__ import annotations

import math
from typing import Any

from _report import check, f, table
from _scaleout_harness import PG, REDIS1, REDIS2, SQLITE

NAN = math.nan


def _g(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return NAN
        d = d[key]
    return d


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    added = out.get("redis_added", {})
    lost = sum(
        node.get("flowserve_event_log_write_failures_total", 0.0)
        for nodes in out.get("metrics", {}).values()
        for node in nodes.values()
    )
    return [
        check("run events not written to Redis (the cluster's processes)", lost, 0, "events"),
        check("Redis added to TTFT c=1 p50", added.get("ttft_c1_p50_ms", NAN), 0.5, "ms"),
        check(
            "Redis added to per-token delay c=100 p99",
            added.get("token_c100_p99_ms", NAN),
            0.5,
            "ms",
        ),
    ]


def _pool_flag(cfg: dict[str, Any]) -> str:
    url = cfg.get("redis_url", "")
    return (
        f" --redis-pool {url.split('max_connections=', 1)[1]}" if "max_connections=" in url else ""
    )


def _header(out: dict[str, Any]) -> list[str]:
    m, cfg, git = out["machine"], out["config"], out.get("flowserve", {})
    dirty = git.get("src_dirty_files")
    load = out.get("loadavg", {})
    foreign = out.get("foreign_load", {})
    return [
        "## Scale-out: processes, PostgreSQL and Redis (`bench/scaleout.py`)",
        "",
        f"Run {m['date']}{' (--quick)' if cfg['quick'] else ''} on {m['nproc']} cores "
        f"({m['cpu_model']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, Python "
        f"{out['python']}; total {f(out.get('total_seconds', NAN), 0)} s. flowserve at commit "
        f"{git.get('commit')}"
        + (f" plus {dirty} uncommitted file(s) under src/" if dirty else "")
        + f". Upstream: bench/fake_upstream.py, {cfg['tokens']} tokens per response. Client: "
        f"{cfg['client']}, route {cfg['route']}. PostgreSQL and Redis: the machine's "
        "(127.0.0.1:5432, a fresh database per deployment; 127.0.0.1:6379, a key prefix per "
        f"run; `FLOWSERVE_REDIS_URL={cfg.get('redis_url', '?')}`). Reproduce: "
        f"`.venv/bin/python bench/scaleout.py{_pool_flag(cfg)}`.",
        "",
        f"Load on the machine: /proc/loadavg `{load.get('before', '?')}` before, "
        f"`{load.get('after', '?')}` after; other processes used "
        f"{f(foreign.get('cpu_s', NAN), 0)} CPU-s during the measurements "
        f"({f(foreign.get('avg_cores', NAN))} cores on average).",
    ]


def _saturation(out: dict[str, Any]) -> list[str]:
    sat = out.get("saturation")
    if not sat:
        return []
    groups = ["load generator", "fake upstream", "redis", "postgres (our backends)"]
    groups += ["postgres (background)"]
    rows = []
    for name, row in sat.items():
        cores = row["cpu_cores"]
        per_fs = " + ".join(f(cores[p]) for p in row["processes"])
        rows.append(
            [
                name,
                f"{row['completed']}/{row['streams']}",
                row["tokens_per_s"],
                f"{f(row['x_sqlite'])}x",
                row["streams_per_s"],
                row["flowserve_cpu_ms_per_1k_tokens"],
                row.get("messages_per_stream", NAN),
                per_fs,
                *(cores.get(g, NAN) for g in groups),
                row["cpu_cores_machine"],
                row["cpu_cores_other"],
            ]
        )
    c = next(iter(sat.values()))["concurrency"]
    slices = out["config"]["plan"]["sat_slices"]
    seconds = out["config"]["plan"]["sat_seconds"]
    return [
        "",
        f"### Saturation (gap 0, closed loop c={c}, {slices} x {f(seconds, 0)} s per target, "
        "interleaved)",
        "",
        "CPU in cores (CPU-seconds / wall second, /proc/<pid>/stat) during the target's "
        "slices; `2p` spreads the streams round-robin over A and B. `other` = the machine's "
        "busy time (/proc/stat) minus everything listed: other engineers' processes, and "
        "idle flowserve processes' heartbeats.",
        "",
        table(
            [
                "target",
                "ok",
                "tokens/s",
                "x SQLite",
                "streams/s",
                "flowserve CPU ms / 1k tokens",
                "SSE messages / stream",
                "flowserve cores",
                "load gen",
                "fake",
                "Redis",
                "PG backends",
                "PG background",
                "machine busy",
                "other",
            ],
            rows,
        ),
        "",
        _limit_text(out),
    ]


def _split(row: dict[str, Any]) -> tuple[float, float, float, float]:
    """(flowserve cores, the benchmark's other processes, other processes, machine busy)."""
    cores = row["cpu_cores"]
    fs = row["cpu_cores_flowserve"]
    support = sum(v for g, v in cores.items() if g not in row["processes"])
    return fs, support, row["cpu_cores_other"], row["cpu_cores_machine"]


def _limit_text(out: dict[str, Any]) -> str:
    """What the CPU figures say limits 1 → 2 processes: tokens/s = flowserve cores x tokens
    per flowserve core-second, so the ratio splits into the cores the second process added
    and what each core yields."""
    sat = out["saturation"]
    one, two = sat.get(REDIS1), sat.get(REDIS2)
    if not one or not two or not one["tokens_per_s"]:
        return ""
    nproc = out["machine"]["nproc"] or 2
    ratio = two["tokens_per_s"] / one["tokens_per_s"]
    f1, s1, o1, m1 = _split(one)
    f2, s2, o2, m2 = _split(two)
    e1, e2 = one["tokens_per_s"] / f1 if f1 else NAN, two["tokens_per_s"] / f2 if f2 else NAN
    c2 = two["cpu_cores"]
    pg2 = c2.get("postgres (our backends)", 0.0) + c2.get("postgres (background)", 0.0)
    full = m2 >= 0.9 * nproc
    return (
        f"**1 → 2 processes on PostgreSQL + Redis: {f(ratio)}x the tokens/s** = "
        f"{f(f2 / f1 if f1 else NAN)}x the flowserve cores ({f(f1)} → {f(f2)}) x "
        f"{f(e2 / e1 if e1 else NAN)}x the tokens per flowserve core-second "
        f"({f(e1, 0)} → {f(e2, 0)}). Of the machine's {nproc} cores, with one process: "
        f"flowserve {f(f1)}, the benchmark's other processes {f(s1)}, other processes "
        f"{f(o1)}, busy {f(m1)}; with two: flowserve {f(f2)}, the benchmark's other processes "
        f"{f(s2)} (load generator {f(c2.get('load generator', NAN))}, fake upstream "
        f"{f(c2.get('fake upstream', NAN))}, Redis {f(c2.get('redis', NAN))}, PostgreSQL "
        f"{f(pg2)}), other processes {f(o2)}, busy {f(m2)}. "
        + (
            "The machine's cores were all busy: the second process only had the CPU that the "
            "first, the load generator, the upstream, Redis, PostgreSQL and the machine's "
            "other users left, so the ratio is bounded by the cores there were, not by "
            "anything the processes share."
            if full
            else "The machine had idle CPU: something other than CPU (a shared wait) "
            "limited the second process."
        )
        + _probe_text(out)
    )


def _probe_text(out: dict[str, Any]) -> str:
    probe = out.get("cpu_probe")
    if not probe:
        return ""
    return (
        f" And the cores themselves: a pure-Python loop run in two processes at once did "
        f"{f(probe['x'])}x the work of one alone (measured before the servers started), so "
        "the tokens per core-second fall when both cores are busy, whatever runs on them."
        if probe["x"] < 1.9
        else f" (A pure-Python loop in two processes at once did {f(probe['x'])}x the work of "
        "one alone: the two cores do not slow each other.)"
    )


def _redis_path(out: dict[str, Any]) -> list[str]:
    ttft, paced, added = out.get("ttft_c1"), out.get("paced_c100"), out.get("redis_added")
    if not ttft or not paced or not added:
        return []
    rows = []
    for name in ttft:
        t, p = ttft[name], paced.get(name)
        rows.append(
            [
                name,
                f"{t['completed']}/{t['streams']}",
                t["ttft_ms"]["p50"],
                t["ttft_ms"]["p99"],
                f"{p['completed']}/{p['streams']}" if p else "-",
                _g(p, "token_delay_ms", "p50"),
                _g(p, "token_delay_ms", "p99"),
                _g(p, "ttft_ms", "p50"),
            ]
        )
    ping = out.get("redis_ping", {})
    per_round = added.get("token_c100_p99_per_round_ms", [])
    spread = ""
    if per_round:
        spread = (
            " Per round (paired, same round), pg+redis minus pg per-token p99: "
            + ", ".join(f"{x:+.2f}" for x in per_round)
            + f" ms (median {added['token_c100_p99_median_of_rounds_ms']:+.2f}): how much the "
            "figure moves between rounds on this machine."
        )
    plan = out["config"]["plan"]
    return [
        "",
        f"### Redis in the path (TTFT c=1: {plan['ttft_rounds']} rounds of 3-token responses; "
        f"per-token delay c=100: {plan['paced_rounds']} rounds of 100 streams x "
        f"{out['config']['tokens']} tokens, {f(out['config']['gap_ms'], 0)} ms apart; "
        "interleaved)",
        "",
        f"`{PG}` and `{REDIS1}` are the same set-up (one process, PostgreSQL) but for "
        "`FLOWSERVE_REDIS_URL`: the difference is what Redis adds (one admission script per "
        "run, the event log written in batches by one task). Times in ms. Per-token delay as "
        "in the relay benchmark: how much later token i came than the stream's fastest token.",
        "",
        table(
            [
                "target",
                "ok c=1",
                "TTFT p50",
                "TTFT p99",
                "ok c=100",
                "token delay p50",
                "token delay p99",
                "TTFT p50 c=100",
            ],
            rows,
        ),
        "",
        f"Redis added ({REDIS1} minus {PG}): TTFT c=1 p50 {added['ttft_c1_p50_ms']:+.3f} ms, p99 "
        f"{added['ttft_c1_p99_ms']:+.3f} ms; per-token delay c=100 p50 "
        f"{added['token_c100_p50_ms']:+.3f} ms, p99 {added['token_c100_p99_ms']:+.3f} ms."
        + spread
        + (
            " One Redis round trip (PING from the load generator, 5 ms apart) took p50 "
            f"{f(ping['p50'], 3)} ms, p99 {f(ping['p99'], 3)} ms on this machine meanwhile."
            if ping
            else ""
        ),
    ]


def _dist_rows(section: dict[str, Any], metrics: list[str]) -> list[list[Any]]:
    rows = []
    for condition, row in section.items():
        line = [condition, f"{row['ok']}/{row['samples']}"]
        for m in metrics:
            line += [row[m]["p50"], row[m]["p99"], row[m]["max"]]
        line.append(", ".join(f"{k}: {v}" for k, v in row["errors"].items()) or "-")
        rows.append(line)
    return rows


def _cluster(out: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    if out.get("resume"):
        parts += [
            "",
            "### Resume (`last-event-id: <run_id>:<n>`)",
            "",
            "A legacy stream on A is dropped by its client after its 5th token (30 tokens, 10 "
            "ms apart), and re-POSTed 30 ms later with the last id it had, to A or to B; 4 "
            "such clients at a time. From the resuming request written to its response head, "
            "and to its first resumed byte (the snapshot message). Every resumed stream was "
            "read to its end and checked whole. ms.",
            "",
            table(
                [
                    "resumed on",
                    "ok",
                    "head p50",
                    "head p99",
                    "head max",
                    "first resumed byte p50",
                    "p99",
                    "max",
                    "errors",
                ],
                _dist_rows(out["resume"], ["to_head_ms", "to_first_resumed_token_ms"]),
            ),
        ]
    if out.get("stop"):
        parts += [
            "",
            "### Stop for a run A owns",
            "",
            "`POST /inference/v0/stop/{org}/{flow}?run_id=` sent (private key) after the run's "
            "first token, to B or to A; from the stop request written (B receives it on "
            "loopback microseconds later) to A's stream ending at its client, and to the stop's "
            "answer. ms.",
            "",
            table(
                [
                    "stop",
                    "ok",
                    "A's stream ended p50",
                    "p99",
                    "max",
                    "stop answered p50",
                    "p99",
                    "max",
                    "errors",
                ],
                _dist_rows(out["stop"], ["to_stream_end_ms", "to_stop_answer_ms"]),
            ),
        ]
    inv = out.get("invalidations")
    if inv:
        rows = []
        for name in ("key revocation", "flow publish"):
            r = inv[name]
            d = r["seen_by_b_ms"]
            rows.append(
                [
                    name,
                    r["ok"],
                    d["p50"],
                    d["p99"],
                    d["max"],
                    r["answer_from_a_ms"]["p50"],
                    r["poll_round_trip_ms"]["p50"],
                ]
            )
        parts += [
            "",
            "### Revocation and publish through A, seen by B",
            "",
            "B polls on one keep-alive connection (a revoked key: `GET /v1/models` with it "
            "until 401; a publish: `GET /v1/orgs/{org}/flows/pub/interface` until its version "
            "is the new one, the same cached lookup a run makes), while the `DELETE "
            "/v1/orgs/{org}/keys/{id}` or `POST /v1/orgs/{org}/flows` goes to A. From that "
            "request written to B's first answer showing it; resolution: one poll. Both "
            "processes cache keys and flows for 60 s here, so only the invalidation explains "
            "it. ms.",
            "",
            table(
                ["through A", "ok", "seen by B p50", "p99", "max", "A answered p50", "poll p50"],
                rows,
            ),
        ]
        for p in inv.get("problems", []):
            parts.append(f"\n- problem: {p}")
    return parts


def _health(out: dict[str, Any]) -> list[str]:
    h = out.get("health")
    if not h:
        return []
    lines = [
        "",
        "### What the servers left behind",
        "",
        f"Runs recorded {out.get('runs_recorded', '?')}, upstream calls made by flowserve "
        f"{out.get('upstream_calls_by_flowserve', '?')} (each run calls it once).",
        "",
    ]
    for name, row in h.items():
        states = ", ".join(f"{k} {v}" for k, v in sorted(row["run_states"].items()))
        lost = {
            k.removeprefix("flowserve_").removesuffix("_total"): v
            for node in row.get("metrics", {}).values()
            for k, v in node.items()
            if v
        }
        lines.append(
            f"- {name}: runs by state {states or '-'}; counters of losses at the end: "
            + (", ".join(f"{k} {v:g}" for k, v in lost.items()) or "all 0")
            + f"; {row['log_problems']} warning/error line(s) in its processes' logs"
        )
        for message, count in list(row.get("log_messages", {}).items())[:8]:
            lines.append(f"  - {count} x `{message}`")
    return lines


def render(out: dict[str, Any]) -> str:
    parts = _header(out)
    parts += [
        "",
        "### Targets",
        "",
        table(
            ["target", "measured", "limit", ""],
            [[c["target"], c["shown"], c["limit"], f"**{c['verdict']}**"] for c in targets(out)],
        ),
    ]
    parts += _saturation(out) + _redis_path(out) + _cluster(out) + _health(out)
    if out.get("notes"):
        parts += ["", "### Notes", ""] + [f"- {n}" for n in out["notes"]]
    return "\n".join(parts)


__all__ = ["PG", "REDIS1", "REDIS2", "SQLITE", "render", "targets"]
