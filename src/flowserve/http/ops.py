"""Handlers for operators: ``/healthz``, ``/metrics`` (Prometheus), and the API's own
description (``/openapi.json``, ``/docs``, ``/redoc``).

Metric labels carry no key or user ids and no secret, and stay few (bounded cardinality):
state, provider, token kind, error type, and on ``flowserve_run_duration_seconds`` the flow as
``org/flow_id``, capped at ``metrics_max_flows`` values (the runs of other flows count under
``_other``). That label shows which orgs and flows exist and how busy they are, so /metrics is
for the operator's Prometheus, not for the public internet. Values are read at scrape time from
plain counters and bucket arrays that a run adds to once, when it ends (``RunMetrics``);
nothing is done per token. Providers add their own collectors (``Provider.collectors``), e.g.
the embedded model's queue wait; this module names none of them.

The names, which ``dashboards/grafana/flowserve.json`` queries (tests/test_dashboard.py):

- ``flowserve_runs_total{state}``, ``flowserve_runs_in_flight``, ``flowserve_streams_open``
- ``flowserve_tokens_total{provider,kind}``, ``flowserve_provider_errors_total{provider,type}``
- ``flowserve_time_to_first_token_seconds{provider}``: from the request accepted to the run's
  first token, for runs that had one; the provider of the run's first LLM node to start
- ``flowserve_tokens_per_second{provider}``: completion tokens / duration of each LLM node
  that completed with at least one
- ``flowserve_run_duration_seconds{flow,state}``: from the request accepted to the run's end
- ``flowserve_run_record_write_failures_total``
- ``flowserve_event_log_write_failures_total``: run events dropped from the shared event log
  (Redis unreachable)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.responses import HTMLResponse, Response

from flowserve.http.routing import Call
from flowserve.providers.registry import ProviderRegistry
from flowserve.runs.metrics import RunMetrics
from flowserve.services import Services

# /healthz reports a run record lost within this many seconds (its write failed for good).
RECORD_FAILURE_WINDOW = 300.0


def _histogram(
    name: str,
    documentation: str,
    labels: Sequence[str],
    bounds: Sequence[float],
    table: Mapping[tuple[str, ...], list[float]],
) -> HistogramMetricFamily:
    """A histogram family from RunMetrics' bucket arrays (a count per bucket, the +Inf
    count, the sum), made cumulative as Prometheus wants."""
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    edges = [floatToGoString(bound) for bound in bounds] + ["+Inf"]
    for key, counts in sorted(table.items()):
        cumulative, buckets = 0.0, []
        for edge, count in zip(edges, counts, strict=False):
            cumulative += count
            buckets.append((edge, cumulative))
        family.add_metric(list(key), buckets, counts[-1])
    return family


class _RunCollector(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        runs = self.services.runs
        metrics = runs.metrics
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
        yield CounterMetricFamily(
            "flowserve_event_log_write_failures",
            "Run events not written to the shared event log (Redis unreachable)",
            value=self.services.cluster.write_failures,
        )
        yield GaugeMetricFamily(
            "flowserve_streams_open", "Streaming responses open", value=metrics.streams_open
        )
        errors = CounterMetricFamily(
            "flowserve_provider_errors",
            "Runs failed by an error of an LLM node's provider, by error type",
            labels=["provider", "type"],
        )
        for (provider, error_type), count in sorted(metrics.provider_errors.items()):
            errors.add_metric([provider, error_type], count)
        yield errors
        yield _histogram(
            "flowserve_time_to_first_token_seconds",
            "From the request accepted to the run's first token, by the provider of its "
            "first LLM node, seconds",
            ["provider"],
            RunMetrics.TTFT_BUCKETS,
            metrics.ttft,
        )
        yield _histogram(
            "flowserve_tokens_per_second",
            "Completion tokens per second of each LLM node that completed with some",
            ["provider"],
            RunMetrics.RATE_BUCKETS,
            metrics.tokens_per_second,
        )
        yield _histogram(
            "flowserve_run_duration_seconds",
            "From the request accepted to the run's end, by flow (org/flow_id, the first "
            f"metrics_max_flows seen; others {RunMetrics.OTHER_FLOWS}) and final state, seconds",
            ["flow", "state"],
            RunMetrics.DURATION_BUCKETS,
            metrics.duration,
        )


class _ProviderCollector(Collector):
    """The collectors of the providers in use, asked at each scrape (a provider is made when
    a flow first uses it, after this registry)."""

    def __init__(self, registry: ProviderRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for collector in self.registry.collectors():
            yield from collector.collect()


def metrics_registry(services: Services) -> CollectorRegistry:
    # The app's own registry, not prometheus_client's global one: tests build many apps in
    # one process. The flow-label cap is set here, where the metrics are made for the app.
    services.runs.metrics.max_flows = services.settings.metrics_max_flows
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_RunCollector(services))
    registry.register(_ProviderCollector(services.registry))
    return registry


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


async def healthz(call: Call) -> Response:
    """503 while draining (a load balancer takes the instance out) or when a run record was
    lost lately (the database refuses writes: the records are incomplete). Redis unreachable
    is 200 ``{"status": "degraded", "redis": "unreachable"}``: the process still serves, with
    limits counted per process, and a 503 would take every process out at once. The
    ``x-flowserve-instance`` header names the process that answered (its instance id), for
    several behind one port (``serve --workers``) or a load balancer."""
    services = call.http.services
    response = _health(services)
    response.headers["x-flowserve-instance"] = services.instances.id
    return response


def _health(services: Services) -> Response:
    if services.runs.draining:
        return _json({"status": "draining"}, 503)
    writer = services.runs.store.writer
    if not writer.healthy(RECORD_FAILURE_WINDOW):
        problem = f"run records could not be written ({writer.last_failure_error})"
        return _json({"status": "degraded", "problem": problem}, 503)
    cluster = services.cluster.status()
    if cluster["backend"] == "local":
        return _json({"status": "ok"})
    status = "ok" if cluster["state"] == "ok" else "degraded"
    return _json({"status": status, cluster["backend"]: cluster["state"]})


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
