"""/metrics: counts an operator can act on and graph, with bounded labels, no key or user ids
and no secrets."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Server) -> Samples:
    """Every sample of /metrics, by (sample name, sorted labels), parsed as Prometheus would."""
    response = httpx.get(f"{server.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def run(server: Server, flow_id: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/run_deployed_flow?flow_id={flow_id}&org={server.org}",
        headers=server.auth(),
        json=body or {},
        timeout=30,
    )


def publish(server: Server, text: str) -> None:
    response = server.publish(text)
    assert response.status_code in (200, 201), response.text


def test_metrics_count_runs_and_tokens_without_ids_or_secrets(server: Server):
    for text in ("one two three", "four five"):
        body = {"in-0": text, "user_id": "user-metrics-7f3a"}
        assert run(server, "echo", body).status_code == 200
    run(server, "failing")
    page = httpx.get(f"{server.base_url}/metrics").text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line and not line.startswith("#")
    }
    assert values['flowserve_runs_total{state="COMPLETED"}'] >= 2
    assert values['flowserve_runs_total{state="FAILED"}'] >= 1
    assert values['flowserve_tokens_total{kind="completion_tokens",provider="scripted"}'] >= 5
    assert values["flowserve_runs_in_flight"] == 0
    # Flow ids do show (the run duration's flow label); keys, their ids and users never do.
    key_ids = [key.split("-")[2] for key in (server.public_key, server.private_key)]
    for secret in (server.public_key, server.private_key, *key_ids, "user-metrics-7f3a"):
        assert secret not in page
    # Every label is one of a few bounded kinds.
    names = {label for _, labels in scrape(server) for label, _ in labels}
    assert names <= {"state", "provider", "kind", "type", "flow", "le"}, names


def test_time_to_first_token_is_observed_once_per_run_with_a_token(server: Server):
    publish(
        server,
        "id: silent\nnodes:\n"
        '  llm-0: {type: llm, provider: scripted, model: "echo?fail_after=0", prompt: "x"}\n'
        "outputs: {out-0: llm-0}\n",
    )
    name = "flowserve_time_to_first_token_seconds"
    before = scrape(server)
    assert run(server, "echo", {"in-0": "a b c"}).status_code == 200
    assert run(server, "echo", {"in-0": "d"}).status_code == 200
    assert run(server, "silent").status_code == 502  # failed before its first token
    after = scrape(server)
    count = value(after, f"{name}_count", provider="scripted")
    assert count - value(before, f"{name}_count", provider="scripted") == 2
    assert value(after, f"{name}_sum", provider="scripted") > value(
        before, f"{name}_sum", provider="scripted"
    )
    # Cumulative buckets: +Inf holds them all.
    assert value(after, f"{name}_bucket", provider="scripted", le="+Inf") == count
    assert value(after, f"{name}_bucket", provider="scripted", le="0.005") <= count


def test_tokens_per_second_of_a_paced_node(server: Server):
    # Ten tokens, each 50 ms after the one before: at most 20 tokens/s, less on a busy machine.
    publish(
        server,
        "id: paced\nnodes:\n"
        "  llm-0: {type: llm, provider: scripted, "
        'model: "echo?delay=0.05&text=a+b+c+d+e+f+g+h+i+j", prompt: "x"}\n'
        "outputs: {out-0: llm-0}\n",
    )
    name = "flowserve_tokens_per_second"
    before = scrape(server)
    response = run(server, "paced")
    assert response.json() == {"out-0": "a b c d e f g h i j"}
    after = scrape(server)
    count = value(after, f"{name}_count", provider="scripted")
    assert count - value(before, f"{name}_count", provider="scripted") == 1
    rate = value(after, f"{name}_sum", provider="scripted") - value(
        before, f"{name}_sum", provider="scripted"
    )
    assert 2 <= rate <= 20 * 1.02, rate
    # A node that failed is no rate: the failing flow adds none.
    run(server, "failing")
    assert value(scrape(server), f"{name}_count", provider="scripted") == count


def test_streams_open_counts_a_held_stream_until_its_client_leaves(server: Server):
    assert value(scrape(server), "flowserve_streams_open") == 0
    publish(
        server,
        "id: held\nnodes:\n"
        '  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.2&repeat=200", '
        'prompt: "x"}\noutputs: {out-0: llm-0}\n',
    )
    cancelled = value(scrape(server), "flowserve_runs_total", state="CANCELLED")
    url = f"{server.base_url}/stream_exported_flow?flow_id=held&org={server.org}"
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", url, headers=server.auth(), json={}) as response,
    ):
        assert response.status_code == 200
        chunks = response.iter_raw()  # kept: a dropped iterator closes the connection
        next(chunks)  # the first frame: the stream is open
        assert value(scrape(server), "flowserve_streams_open") == 1
    # The connection is closed here; the server notices, cancels the run and counts it gone.
    deadline = time.monotonic() + 10
    samples = scrape(server)
    while value(samples, "flowserve_streams_open") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        samples = scrape(server)
    assert value(samples, "flowserve_streams_open") == 0
    assert value(samples, "flowserve_runs_total", state="CANCELLED") == cancelled + 1


def test_provider_errors_are_counted_by_provider_and_type(server: Server):
    publish(
        server,
        "id: no-first-token\nnodes:\n"
        '  llm-0: {type: llm, provider: scripted, model: "echo?first_delay=5", prompt: "x", '
        "first_token_timeout: 0.2}\noutputs: {out-0: llm-0}\n",
    )
    publish(
        server,
        "id: too-slow\nlimits: {timeout: 0.2}\nnodes:\n"
        '  llm-0: {type: llm, provider: scripted, model: "echo?first_delay=5", prompt: "x"}\n'
        "outputs: {out-0: llm-0}\n",
    )
    name = "flowserve_provider_errors_total"
    before = scrape(server)
    failed = run(server, "failing")  # llm-0 fails after three tokens
    assert failed.status_code == 502
    assert failed.json()["detail"]["error_type"] == "provider_upstream_error"
    assert run(server, "no-first-token").json()["detail"]["error_type"] == "provider_timeout"
    # The run's own time limit is not the provider's fault: not counted.
    assert run(server, "too-slow").json()["detail"]["error_type"] == "timeout"
    after = scrape(server)
    for error_type in ("provider_upstream_error", "provider_timeout"):
        labels = {"provider": "scripted", "type": error_type}
        assert value(after, name, **labels) - value(before, name, **labels) == 1, error_type
    assert (
        sum(v for (n, _), v in after.items() if n == name)
        - sum(v for (n, _), v in before.items() if n == name)
        == 2
    )
    assert not any(n == name and ("type", "timeout") in labels for n, labels in after)


def test_run_duration_is_labelled_by_flow_up_to_the_cap(tmp_path: Path):
    srv = start_server(tmp_path, env={"FLOWSERVE_METRICS_MAX_FLOWS": "2"})
    try:
        for flow_file in ("echo.yaml", "chain.yaml", "failing.yaml"):
            srv.publish_file(flow_file)
        assert run(srv, "echo", {"in-0": "hi"}).status_code == 200
        assert run(srv, "chain", {"in-0": "hi"}).status_code == 200
        assert run(srv, "failing").status_code == 502  # a third flow: over the cap
        assert run(srv, "echo", {"in-0": "again"}).status_code == 200
        samples = scrape(srv)
        name = "flowserve_run_duration_seconds_count"
        assert value(samples, name, flow="acme/echo", state="COMPLETED") == 2
        assert value(samples, name, flow="acme/chain", state="COMPLETED") == 1
        assert value(samples, name, flow="_other", state="FAILED") == 1
        flows = {
            dict(labels)["flow"]
            for n, labels in samples
            if n.startswith("flowserve_run_duration_seconds")
        }
        assert flows == {"acme/echo", "acme/chain", "_other"}
        # the chain's scripted tokens take 40 ms at least
        chain_sum = value(
            samples, "flowserve_run_duration_seconds_sum", flow="acme/chain", state="COMPLETED"
        )
        assert 0.04 <= chain_sum < 30
    finally:
        stop_server(srv)
