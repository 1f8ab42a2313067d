"""``GET /metrics`` in the Prometheus text format.

Labels are deliberately coarse (state, provider): no org, flow, key or user ids, so the page
reveals nothing about tenants and carries no secret. Values are read from plain counters at
scrape time; nothing is done per token.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.responses import Response

from flowserve.runs.service import RunService

router = APIRouter(tags=["ops"])


class _RunCollector(Collector):
    def __init__(self, runs: RunService) -> None:
        self.runs = runs

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        finished = CounterMetricFamily(
            "flowserve_runs", "Runs finished, by final state", labels=["state"]
        )
        for state, count in sorted(self.runs.finished.items()):
            finished.add_metric([state], count)
        yield finished
        yield GaugeMetricFamily(
            "flowserve_runs_in_flight", "Runs in progress", value=len(self.runs.active)
        )
        tokens = CounterMetricFamily(
            "flowserve_tokens", "Tokens reported by providers", labels=["provider", "kind"]
        )
        for (provider, kind), count in sorted(self.runs.tokens.items()):
            tokens.add_metric([provider, kind], count)
        yield tokens


def registry_for(runs: RunService) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_RunCollector(runs))
    return registry


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")
