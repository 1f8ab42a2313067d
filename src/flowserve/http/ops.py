"""Handlers for operators: ``/healthz``, ``/metrics`` (Prometheus), and the API's own
description (``/openapi.json``, ``/docs``, ``/redoc``).

Metric labels are deliberately coarse (state, provider): no org, flow, key or user ids, so the
page reveals nothing about tenants and carries no secret. Values are read from plain counters
at scrape time; nothing is done per token.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.responses import HTMLResponse, Response

from flowserve.http.routing import Call
from flowserve.services import Services

# /healthz reports a run record lost within this many seconds (its write failed for good).
RECORD_FAILURE_WINDOW = 300.0


class _RunCollector(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        runs = self.services.runs
        finished = CounterMetricFamily(
            "flowserve_runs", "Runs finished, by final state", labels=["state"]
        )
        for state, count in sorted(runs.metrics.finished.items()):
            finished.add_metric([state], count)
        yield finished
        yield GaugeMetricFamily(
            "flowserve_runs_in_flight", "Runs in progress", value=len(runs.active)
        )
        tokens = CounterMetricFamily(
            "flowserve_tokens", "Tokens reported by providers", labels=["provider", "kind"]
        )
        for (provider, kind), count in sorted(runs.metrics.tokens.items()):
            tokens.add_metric([provider, kind], count)
        yield tokens
        yield CounterMetricFamily(
            "flowserve_run_record_write_failures",
            "Run records that could not be written after retrying (lost)",
            value=runs.store.writer.failed_writes,
        )


def metrics_registry(services: Services) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_RunCollector(services))
    return registry


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


async def healthz(call: Call) -> Response:
    """503 while draining (a load balancer takes the instance out) or when a run record was
    lost lately (the database refuses writes: the records are incomplete)."""
    services = call.http.services
    if services.runs.draining:
        return _json({"status": "draining"}, 503)
    writer = services.runs.store.writer
    if not writer.healthy(RECORD_FAILURE_WINDOW):
        problem = f"run records could not be written ({writer.last_failure_error})"
        return _json({"status": "degraded", "problem": problem}, 503)
    return _json({"status": "ok"})


async def metrics(call: Call) -> Response:
    return Response(generate_latest(call.http.metrics), media_type="text/plain; version=0.0.4")


async def openapi_json(call: Call) -> Response:
    return Response(call.http.openapi(), media_type="application/json")


async def docs(call: Call) -> Response:
    # FastAPI's page builders (Swagger UI, ReDoc from their CDN), used for these pages only:
    # the routes themselves are flowserve's (flowserve.http.routing).
    from fastapi.openapi.docs import get_swagger_ui_html

    html = get_swagger_ui_html(openapi_url="/openapi.json", title="flowserve - Swagger UI")
    return HTMLResponse(bytes(html.body))


async def redoc(call: Call) -> Response:
    from fastapi.openapi.docs import get_redoc_html

    html = get_redoc_html(openapi_url="/openapi.json", title="flowserve - ReDoc")
    return HTMLResponse(bytes(html.body))
