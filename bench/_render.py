"""The relay results as markdown: targets (PASS/MISS), then one table per phase, then the
profile's top entries. Every figure is beside its ratio to the direct baseline or LiteLLM
measured in the same run."""

from __future__ import annotations

import math
from typing import Any

from _report import check, f, ratio, table

FS = ("fs-legacy", "fs-v0")
MB_IN_MIB = 1e6 / 2**20  # 100 MB = 95.4 MiB


def _get(d: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return math.nan
        d = d[key]
    return d


def _added(rows: dict[str, Any], name: str, metric: str, q: str) -> float:
    return _get(rows, name, metric, q) - _get(rows, "direct", metric, q)


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    ttft, paced = out.get("ttft_c1", {}), out.get("paced", {})
    sat, opened, servers = out.get("saturation", {}), out.get("open_streams", {}), out["servers"]
    for name in FS:
        if name not in ttft:
            continue
        checks += [
            check(f"{name}: added TTFT c=1 p50", _added(ttft, name, "ttft_ms", "p50"), 1, "ms"),
            check(f"{name}: added TTFT c=1 p99", _added(ttft, name, "ttft_ms", "p99"), 3, "ms"),
        ]
        for c, limit in (("1", 0.2), ("100", 2.0)):
            if c in paced:
                value = _added(paced[c], name, "token_delay_ms", "p99")
                checks.append(check(f"{name}: added per-token delay c={c} p99", value, limit, "ms"))
        if name in sat:
            x = ratio(_get(sat, name, "tokens_per_s"), _get(sat, "litellm", "tokens_per_s"))
            checks.append(check(f"{name}: saturation tokens/s vs LiteLLM", x, 10, "x", True))
            cpu = _get(sat, name, "server_cpu_s_per_1k_tokens")
            checks.append(check(f"{name}: CPU per 1,000 tokens", cpu, 0.1, "s"))
    if "fs-legacy" in opened:
        row = opened["fs-legacy"]
        checks.append(
            check(
                f"RSS per held stream ({row['requested']:,} held)",
                row["rss_per_stream_kib"],
                20,
                "KiB",
            )
        )
        active = row.get("rss_per_active_stream_kib", math.nan)
        checks.append(check("RSS per held stream that is streaming", active, 20, "KiB"))
    fs = servers.get("flowserve", {})
    if fs:
        checks.append(check("idle RSS, MB (10^6 B)", fs["idle_rss_mib"] / MB_IN_MIB, 100, "MB"))
        checks.append(check("start to first request served", fs["start_to_first_served_s"], 2, "s"))
    return checks


def _latency_rows(rows: dict[str, Any], with_delay: bool) -> list[list[Any]]:
    out = []
    for name, row in rows.items():
        t, d = row["ttft_ms"], row["token_delay_ms"]
        line = [
            name,
            f"{row['completed']}/{row['streams']}",
            t["p50"],
            t["p99"],
            "-" if name == "direct" else _added(rows, name, "ttft_ms", "p50"),
            "-" if name == "direct" else _added(rows, name, "ttft_ms", "p99"),
            f"{f(ratio(t['p50'], _get(rows, 'direct', 'ttft_ms', 'p50')), 1)}x",
        ]
        if with_delay:
            line += [
                d["p50"],
                d["p99"],
                "-" if name == "direct" else _added(rows, name, "token_delay_ms", "p50"),
                "-" if name == "direct" else _added(rows, name, "token_delay_ms", "p99"),
                row["streams_per_s"],
                row["tokens_per_s"],
            ]
        out.append(line)
    return out


def render(out: dict[str, Any]) -> str:
    m, cfg, fs_git = out["machine"], out["config"], out.get("flowserve", {})
    parts = [
        "## Relay overhead (`bench/relay.py`)",
        "",
        f"Run {m['date']}{' (--quick)' if cfg['quick'] else ''} on {m['nproc']} cores "
        f"({m['cpu_model']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, Python "
        f"{out['python']}; total {f(out.get('total_seconds', math.nan), 0)} s. flowserve at "
        f"commit {fs_git.get('commit')}"
        + (
            f" plus {fs_git['src_dirty_files']} uncommitted file(s) under src/"
            if fs_git.get("src_dirty_files")
            else ""
        )
        + ". Upstream: "
        f"bench/fake_upstream.py, {cfg['tokens']} tokens per response. Client: "
        f"{cfg['client']}. Reproduce: `.venv/bin/python bench/relay.py`.",
        "",
        "### Targets",
        "",
        table(
            ["target", "measured", "limit", ""],
            [[c["target"], c["shown"], c["limit"], f"**{c['verdict']}**"] for c in targets(out)],
        ),
    ]

    servers = out["servers"]
    if servers:
        rows = []
        for name, s in servers.items():
            held = out.get("open_streams", {}).get("fs-legacy" if name == "flowserve" else name, {})
            rows.append(
                [
                    f"{name} {s.get('version', '')}".strip(),
                    s["start_to_first_served_s"],
                    s["idle_rss_mib"],
                    s.get("peak_rss_mib", math.nan),
                    f"{held.get('with_first_token', '-')}/{held.get('requested', '-')}",
                    held.get("rss_per_stream_kib", math.nan),
                    held.get("rss_per_active_stream_kib", math.nan),
                    held.get("seconds_to_open", math.nan),
                ]
            )
        parts += [
            "",
            "### Start-up and memory",
            "",
            table(
                [
                    "server",
                    "start → first request served (s)",
                    "idle RSS (MiB)",
                    "peak RSS (MiB)",
                    "held streams (first token / opened)",
                    "RSS per held stream (KiB)",
                    "RSS per streaming one (KiB)",
                    "time to open (s)",
                ],
                rows,
            ),
        ]
        held = out.get("open_streams", {})
        fs, ll = held.get("fs-legacy"), held.get("litellm")
        if fs and ll:
            x = ratio(fs["rss_per_stream_kib"], ll["rss_per_stream_kib"])
            y = ratio(fs["rss_per_active_stream_kib"], ll["rss_per_active_stream_kib"])
            parts.append(
                f"\nRSS per held stream, flowserve / LiteLLM: {f(x)}x; per streaming one: {f(y)}x."
            )
        for name, row in held.items():
            steps = ", ".join(
                f"{st['opened']} opened / {st['first_token']} streaming: {st['rss_mib']:.0f} MiB"
                for st in row.get("steps", [])
            )
            parts.append(
                f"\nHeld streams through {name}: RSS before {row['rss_before_mib']:.0f} MiB, "
                f"then {steps}."
            )

    if out.get("ttft_c1"):
        parts += [
            "",
            "### Time to first token, c=1 (3-token responses, 10 ms apart)",
            "",
            table(
                ["target", "ok", "p50 ms", "p99 ms", "added p50", "added p99", "p50 x direct"],
                _latency_rows(out["ttft_c1"], with_delay=False),
            ),
        ]

    paced = {k: v for k, v in out.get("paced", {}).items() if k.isdigit()}
    if paced:
        parts += [
            "",
            f"### Paced streams ({cfg['tokens']} tokens, {f(cfg['gap_ms'], 0)} ms apart)",
            "",
            "Times in ms. Per-token delay of token i = (a_i - i x gap) - min over j of "
            "(a_j - j x gap), a = arrival at the client: how much later than the stream's "
            'fastest token it came. "added" = target percentile - direct percentile, same run, '
            "same client.",
        ]
        for c, rows in paced.items():
            cpu = out["paced"].get(f"{c}_server_cpu_s", {})
            per_k = []
            for server, names in (("flowserve", FS), ("LiteLLM", ("litellm", "litellm-sdk"))):
                key = "fs-legacy" if server == "flowserve" else "litellm"
                tokens = sum(rows[n]["completed"] * cfg["tokens"] for n in names if n in rows)
                if key in cpu and tokens:
                    per_k.append(f"{server} {1000 * cpu[key] / tokens:.3f}")
            parts += [
                "",
                f"**c = {c}**",
                "",
                table(
                    [
                        "target",
                        "ok",
                        "TTFT p50",
                        "TTFT p99",
                        "added p50",
                        "added p99",
                        "TTFT x direct",
                        "delay p50",
                        "delay p99",
                        "added p50",
                        "added p99",
                        "streams/s",
                        "tokens/s",
                    ],
                    _latency_rows(rows, with_delay=True),
                ),
                "",
                "Server CPU-s per 1,000 tokens over this phase (paced tokens are not coalesced; "
                "includes the server's idle time while other targets ran): "
                + (", ".join(per_k) or "-")
                + ".",
            ]

    sat = out.get("saturation", {})
    if sat:
        rows = []
        ll_tok, ll_cpu = (
            _get(sat, "litellm", "tokens_per_s"),
            _get(sat, "litellm", "server_cpu_s_per_1k_tokens"),
        )
        for name, row in sat.items():
            rows.append(
                [
                    name,
                    f"{row['completed']}/{row['streams']}",
                    row["streams_per_s"],
                    row["tokens_per_s"],
                    f"{f(ratio(row['tokens_per_s'], ll_tok), 1)}x",
                    row["ttft_ms"]["p50"],
                    f"{row['server_cpu_s_per_1k_tokens']:.3f}",
                    f"{f(ratio(row['server_cpu_s_per_1k_tokens'], ll_cpu))}x",
                    f"{100 * row['server_cpu_util']:.0f}%",
                    f"{100 * row['client_cpu_util']:.0f}%",
                    row["peak_rss_mib"],
                ]
            )
        c = next(iter(sat.values()))["concurrency"]
        parts += [
            "",
            f"### Saturation (upstream gap 0, closed loop, c={c}, lean client in one process)",
            "",
            "Server CPU: user+system of the server's process tree (/proc/<pid>/stat) over the "
            "measured slices; for `direct` the server is the fake upstream itself. A client "
            "near 100% means that row is client-bound (only `direct` should be).",
            "",
            table(
                [
                    "target",
                    "ok",
                    "streams/s",
                    "tokens/s",
                    "x LiteLLM",
                    "TTFT p50 ms",
                    "server CPU s / 1k tokens",
                    "x LiteLLM",
                    "server CPU",
                    "client CPU",
                    "peak RSS MiB",
                ],
                rows,
            ),
        ]

    coalescing = out.get("coalescing", {})
    if coalescing:
        rows = [
            [
                name,
                f"{row['completed']}/{row['streams']}",
                row["streams_per_s"],
                row["tokens_per_s"],
                row["ttft_ms"]["p50"],
                f"{row['server_cpu_s_per_1k_tokens']:.3f}",
                row["messages_per_stream"],
                row["body_kib_per_stream"],
            ]
            for name, row in coalescing.items()
        ]
        parts += [
            "",
            "### Adaptive coalescing on and off (saturation load, c=100, gap 0)",
            "",
            "`on` is the flowserve above; `off` a second flowserve process on the same "
            "upstream with `FLOWSERVE_STREAM_COALESCE=false` (every event its own frame), "
            "measured in alternating slices. Messages: SSE `data:` lines the client received "
            "per stream (the fake upstream sends each response's 50 tokens in one write); body: "
            "bytes of SSE per stream (legacy frames are cumulative, so unmerged frames repeat "
            "the text so far).",
            "",
            table(
                [
                    "flowserve",
                    "ok",
                    "streams/s",
                    "tokens/s",
                    "TTFT p50 ms",
                    "server CPU s / 1k tokens",
                    "messages per stream",
                    "body KiB per stream",
                ],
                rows,
            ),
        ]

    profile = {k: v for k, v in out.get("profile", {}).items() if isinstance(v, dict)}
    for name, prof in profile.items():
        threads = ", ".join(
            f"{t['group']} ({t['threads']} thread{'s' if t['threads'] > 1 else ''}) {t['pct']:.0f}%"
            for t in prof["threads"]
        )
        parts += [
            "",
            f"### Profile: flowserve, {name} at saturation (py-spy, `{prof['file']}`)",
            "",
            f"On-CPU samples: {prof['all_samples']} in all threads, {prof['main_samples']} in "
            f"the event loop. By thread: {threads}. The tables below are the event loop's "
            "(MainThread's) samples.",
            "",
            "Own time by package:",
            "",
            table(
                ["%", "package"],
                [[p["pct"], p["package"]] for p in prof["by_package"] if p["pct"] >= 0.5],
            ),
            "",
            "Top functions by own time, each with its most frequent caller and the innermost "
            "flowserve frame above it:",
            "",
            table(
                ["%", "function", "called from", "flowserve frame"],
                [
                    [
                        p["pct"],
                        f"`{p['function']}`",
                        f"`{p['caller']}`",
                        f"`{p['flowserve_frame']}`",
                    ]
                    for p in prof["own"][:20]
                ],
            ),
            "",
            "flowserve's own functions by inclusive time:",
            "",
            table(
                ["%", "function"],
                [[p["pct"], f"`{p['function']}`"] for p in prof["flowserve_inclusive"][:15]],
            ),
        ]
    if out.get("profile", {}).get("svg"):
        parts += ["", f"Flame graph: `{out['profile']['svg']}` (not committed; re-run to get it)."]

    if out.get("notes"):
        parts += ["", "### Notes", ""] + [f"- {n}" for n in out["notes"]]
    return "\n".join(parts)
