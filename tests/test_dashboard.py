"""The Grafana dashboard (dashboards/grafana/flowserve.json) is importable and queries only
metrics a real server exposes: each name in its PromQL is in a /metrics scrape, with samples,
after runs on the scripted provider (one failing) and on the embedded model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, start_server, stop_server

pytestmark = pytest.mark.slow

DASHBOARD = ROOT / "dashboards" / "grafana" / "flowserve.json"
# A metric name in PromQL: not preceded by a name character (nor a `$` variable).
METRIC = re.compile(r"(?<![\w$])flowserve_[a-z_]+")
SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def panels() -> list[dict]:
    found = []
    for panel in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # panels inside a collapsed row
    return found


def queried(expr: str) -> set[str]:
    """The series names a PromQL expression reads. Label values and strings are left out
    (a quoted string may hold anything)."""
    return set(METRIC.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)))


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_the_tokenizer_finds_names_and_their_families():
    expr = (
        "histogram_quantile(0.95, sum by (le) (rate(flowserve_a_seconds_bucket[$__rate_interval])"
        ' / on() flowserve_b_total{x="flowserve_not_a_query"}))'
    )
    assert queried(expr) == {"flowserve_a_seconds_bucket", "flowserve_b_total"}
    assert family("flowserve_a_seconds_bucket") == "flowserve_a_seconds"
    assert family("flowserve_streams_open") == "flowserve_streams_open"


def test_the_dashboard_is_importable():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["title"] and dashboard["uid"]
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)) and ids
    for panel in panels():
        assert panel["title"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no target"
        for target in targets:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]")
            assert queried(expr), f"{panel['title']!r}: {expr} queries no flowserve metric"
        assert len({t["refId"] for t in targets}) == len(targets)


def test_every_metric_the_dashboard_queries_is_exposed(tmp_path: Path):
    srv = start_server(tmp_path)
    try:
        for flow_file in ("echo.yaml", "failing.yaml", "local.yaml"):
            srv.publish_file(flow_file)

        def run(flow_id: str, body: dict) -> int:
            url = f"{srv.base_url}/run_deployed_flow?flow_id={flow_id}&org={srv.org}"
            return httpx.post(url, headers=srv.auth(), json=body, timeout=60).status_code

        assert run("echo", {"in-0": "one two three"}) == 200
        assert run("failing", {}) == 502  # a provider error
        assert run("local", {"in-0": "Hi"}) == 200  # the embedded model: its queue wait
        stream = f"{srv.base_url}/stream_exported_flow?flow_id=echo&org={srv.org}"
        assert httpx.post(stream, headers=srv.auth(), json={"in-0": "x"}).status_code == 200
        text = httpx.get(f"{srv.base_url}/metrics", timeout=10).text
    finally:
        stop_server(srv)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sample_names = {s.name for f in families.values() for s in f.samples}
    names = {name for panel in panels() for t in panel["targets"] for name in queried(t["expr"])}
    # every panel the brief of the dashboard lists has its metric
    assert {
        "flowserve_runs_total",
        "flowserve_runs_in_flight",
        "flowserve_streams_open",
        "flowserve_time_to_first_token_seconds_bucket",
        "flowserve_tokens_per_second_bucket",
        "flowserve_provider_errors_total",
        "flowserve_local_model_queue_wait_seconds_bucket",
        "flowserve_run_duration_seconds_bucket",
        "flowserve_run_record_write_failures_total",
    } <= names
    for name in sorted(names):
        assert family(name) in families, f"{name}: no family {family(name)} in /metrics"
        assert name in sample_names, f"{name}: no such samples in /metrics"
        if name.endswith("_bucket"):  # a histogram the server has observed into
            count = [s for s in families[family(name)].samples if s.name.endswith("_count")]
            assert any(s.value >= 1 for s in count), f"{name}: nothing observed"
