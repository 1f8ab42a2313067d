"""What /metrics shows of the runs: plain counters and histogram buckets, added to once per
run as it ends (:meth:`RunMetrics.count`, O(nodes)), never per token, and read at scrape time
by ``flowserve.http.ops``, which renders them."""

from __future__ import annotations

import bisect
from collections import Counter
from typing import TYPE_CHECKING

from flowserve.errors import ProviderError
from flowserve.store.database import utcnow
from flowserve.store.runs import COMPLETED, FAILED

if TYPE_CHECKING:
    from flowserve.runs.run import Run

__all__ = ["RunMetrics"]


class RunMetrics:
    """Plain counters and histogram buckets read by /metrics at scrape time, added to once per
    run (O(nodes)) as it ends and never per token; the stream count once per stream.

    Histograms are kept as plain bucket arrays ``[count per bucket…, +Inf count, sum]``: a
    bisect and two additions per observation, nothing shared across apps, and no exposition
    library in the runs package (``flowserve.http.ops`` renders them). The ``flow`` label
    of the run durations is bounded: the first ``max_flows`` flows seen get their own, the
    runs of any other are counted under ``_other``.
    """

    # Upper bounds (Prometheus ``le``), seconds or tokens per second: from the embedded
    # model's milliseconds to a cloud API's tens of seconds.
    TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
    RATE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
    DURATION_BUCKETS = (
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    )  # fmt: skip
    OTHER_FLOWS = "_other"

    __slots__ = (
        "duration",
        "finished",
        "flows",
        "max_flows",
        "provider_errors",
        "streams_open",
        "tokens",
        "tokens_per_second",
        "ttft",
    )

    def __init__(self, max_flows: int = 50) -> None:
        self.finished: Counter[str] = Counter()  # runs by final state
        self.tokens: Counter[tuple[str, str]] = Counter()  # (provider, kind) -> tokens
        self.provider_errors: Counter[tuple[str, str]] = Counter()  # (provider, error type)
        # label values -> [count per bucket…, +Inf count, sum]
        self.ttft: dict[tuple[str, ...], list[float]] = {}  # (provider,)
        self.tokens_per_second: dict[tuple[str, ...], list[float]] = {}  # (provider,)
        self.duration: dict[tuple[str, ...], list[float]] = {}  # (flow, state)
        self.max_flows = max_flows  # distinct ``flow`` labels; set from the settings
        self.flows: set[str] = set()  # the flows that have their own label
        self.streams_open = 0  # streaming responses in progress (flowserve.http.stream)

    @staticmethod
    def _observe(
        table: dict[tuple[str, ...], list[float]],
        key: tuple[str, ...],
        bounds: tuple[float, ...],
        value: float,
    ) -> None:
        counts = table.get(key)
        if counts is None:
            counts = table[key] = [0.0] * (len(bounds) + 2)
        counts[bisect.bisect_left(bounds, value)] += 1
        counts[-1] += value

    def _flow_label(self, run: Run) -> str:
        label = f"{run.loaded.org_id}/{run.flow.id}"
        if label not in self.flows:
            if len(self.flows) >= self.max_flows:
                return self.OTHER_FLOWS
            self.flows.add(label)
        return label

    def count(self, run: Run) -> None:
        state = run.state
        self.finished[state] += 1
        nodes = run.flow.nodes
        usage_of = run.usage
        for node_id, usage in usage_of.items():
            provider = nodes[node_id].provider or "default"
            for kind in ("prompt_tokens", "completion_tokens"):
                if usage.get(kind):
                    self.tokens[(provider, kind)] += usage[kind]
        observe = self._observe
        first: tuple[float, str] | None = None  # (started, provider) of the first LLM node
        for node_id, timing in run.node_timings().items():
            node = nodes[node_id]
            if node.provider is None:  # not a node that calls a provider
                continue
            provider = node.provider or "default"
            if first is None or timing["started_ms"] < first[0]:
                first = (timing["started_ms"], provider)
            completion = (usage_of.get(node_id) or {}).get("completion_tokens") or 0
            duration_ms = timing["duration_ms"]
            if timing["state"] == COMPLETED and completion >= 1 and duration_ms:
                rate = completion / (duration_ms / 1000)
                observe(self.tokens_per_second, (provider,), self.RATE_BUCKETS, rate)
        if run.first_token_at is not None:
            ttft = max((run.first_token_at - run.queued_at).total_seconds(), 0.0)
            label = first[1] if first is not None else "none"  # "none": a template's text
            observe(self.ttft, (label,), self.TTFT_BUCKETS, ttft)
        final = run.final
        if state == FAILED and final is not None and final.node_id is not None:
            failed = nodes.get(final.node_id)
            error_type = final.error_type or ""
            if failed is not None and failed.provider and error_type in _provider_error_types():
                self.provider_errors[(failed.provider or "default", error_type)] += 1
        duration = max((utcnow() - run.queued_at).total_seconds(), 0.0)
        observe(self.duration, (self._flow_label(run), state), self.DURATION_BUCKETS, duration)


def _provider_error_types() -> set[str]:
    """The ``error_type`` of ProviderError and of every subclass (plugins' included): the
    bounded set of types a provider error is counted by."""
    types: set[str] = set()
    todo: list[type[ProviderError]] = [ProviderError]
    while todo:
        cls = todo.pop()
        types.add(cls.error_type)
        todo.extend(cls.__subclasses__())
    return types
