"""Summaries of stream results, the PASS/MISS targets, and the markdown tables.

Definitions (also in bench/README.md):

* TTFT: request written → first token's bytes read, at the client.
* per-token delay of token i: ``(a_i - i*gap) - min_j (a_j - j*gap)``, where ``a_i`` is when
  token i reached the client and ``gap`` the upstream's pacing. The upstream writes token i at
  ``t0 + i*gap`` (absolute timers, so no drift), so ``a_i - i*gap`` is token i's transit time
  plus a constant; the stream's fastest token is the zero. A relay that holds a token back, or
  falls behind, shows here; a slow *first* token shows in TTFT and here. "Added" figures
  subtract the direct baseline's percentile measured in the same run with the same client.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from _loadgen import StreamResult

MS = 1000.0


def pct(values: Sequence[float], q: float) -> float:
    """Percentile with linear interpolation (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarise(
    results: Iterable[StreamResult], expected: str, gap_s: float, wall: float
) -> dict[str, Any]:
    results = list(results)
    ok = [r for r in results if r.error is None and r.text == expected]
    errors: dict[str, int] = {}
    for r in results:
        if r not in ok:
            key = (r.error or f"wrong text ({len(r.text)} chars)")[:120]
            errors[key] = errors.get(key, 0) + 1
    ttft = [r.ttft * MS for r in ok]
    lag: list[float] = []
    for r in ok:
        offsets = [a - i * gap_s for i, a in enumerate(r.arrivals)]
        best = min(offsets)
        lag += [(o - best) * MS for o in offsets]
    tokens = sum(len(r.arrivals) for r in ok)
    return {
        "streams": len(results),
        "completed": len(ok),
        "errors": errors,
        "ttft_ms": {"p50": pct(ttft, 50), "p99": pct(ttft, 99), "max": max(ttft, default=math.nan)},
        "token_delay_ms": {"p50": pct(lag, 50), "p99": pct(lag, 99), "n": len(lag)},
        "duration_ms_p50": pct([(r.end - r.start) * MS for r in ok], 50),
        "wall_s": wall,
        "streams_per_s": len(ok) / wall if wall else math.nan,
        "tokens_per_s": tokens / wall if wall else math.nan,
    }


def added(row: dict[str, Any], base: dict[str, Any], metric: str) -> dict[str, float]:
    return {q: row[metric][q] - base[metric][q] for q in ("p50", "p99")}


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) and not math.isnan(a) else math.nan


# -- targets ---------------------------------------------------------------------------------


def check(name: str, value: float, limit: float, unit: str, higher_is_better: bool = False) -> dict:
    if math.isnan(value):
        verdict = "n/a"
    elif higher_is_better:
        verdict = "PASS" if value >= limit else "MISS"
    else:
        verdict = "PASS" if value <= limit else "MISS"
    sign = "≥" if higher_is_better else "≤"
    if math.isnan(value):
        shown = "-"
    else:
        shown = f"{value:.3f} {unit}" if abs(value) < 1 else f"{value:.3g} {unit}"
    return {
        "target": name,
        "value": value,
        "shown": shown,
        "limit": f"{sign} {limit:g} {unit}",
        "verdict": verdict,
    }


# -- markdown --------------------------------------------------------------------------------


def f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(f(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
