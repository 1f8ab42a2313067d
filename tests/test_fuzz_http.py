"""Fuzzing every route with schemathesis, from the server's own OpenAPI schema, against a real
server process.

Each route is fuzzed in several profiles: generated from the schema alone (mostly unknown orgs,
so 401/404), aimed at a real org, flow and run (so requests reach the body reader, the runner
and the stores), each with valid and with schema-violating (negative) data, and without or with
a wrong API key. Every answer must be below 500, conform to the schema where it declares one,
and schema-violating data must be refused. The server log must show no traceback afterwards.

``FLOWSERVE_FUZZ_EXAMPLES`` scales the budget (default: about 100 examples per route).
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow

BUDGET = int(os.environ.get("FLOWSERVE_FUZZ_EXAMPLES", "100"))  # per route, over all profiles

FUZZ_FLOW = """
id: fuzz
inputs:
  in-0: {default: "hello"}
  in-1: {default: ""}
nodes:
  llm-0: {type: llm, provider: scripted, model: echo, prompt: "{in-0} {in-1}"}
  tpl: {type: template, template: "[{llm-0}] {{literal}}"}
outputs: {out-0: llm-0, out-1: tpl}
"""
# A refusal of schema-violating data may come from the size guards too (413, 414, 431).
REJECTIONS = ["400", "401", "403", "404", "405", "413", "414", "415", "422", "429", "431"]
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}}
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True)
class Profile:
    name: str
    share: float  # of the per-route budget
    mode: GenerationMode
    aimed: bool  # real org / flow / run instead of generated ones
    key: str  # "right", "none" or "wrong"


PROFILES = [
    Profile("aimed", 0.3, GenerationMode.POSITIVE, True, "right"),
    Profile("aimed-negative", 0.3, GenerationMode.NEGATIVE, True, "right"),
    Profile("generated", 0.15, GenerationMode.POSITIVE, False, "right"),
    Profile("generated-negative", 0.15, GenerationMode.NEGATIVE, False, "right"),
    Profile("no-key", 0.05, GenerationMode.POSITIVE, True, "none"),
    Profile("wrong-key", 0.05, GenerationMode.POSITIVE, True, "wrong"),
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # No rate limit: the fuzzer would otherwise mostly measure 429s. More nodes than the
    # default 500, for the 1,500-node chain below (a recursion regression test).
    server = start_server(
        tmp_path_factory.mktemp("fuzz"),
        env={"FLOWSERVE_RATE_LIMIT_PER_MINUTE": "0", "FLOWSERVE_MAX_FLOW_NODES": "2000"},
    )
    try:
        assert server.publish(FUZZ_FLOW).status_code == 201
        yield server
    finally:
        stop_server(server)


def _headers(server: Server, operation: schemathesis.APIOperation, key: str) -> dict[str, str]:
    if key == "none":
        return {}
    if key == "wrong":
        return {"Authorization": "Bearer fs_nosuchkey_0000000000000000"}
    private = operation.path.startswith("/v1/") or operation.method.upper() == "GET"
    return server.auth(server.private_key if private else server.public_key)


def _aim(server: Server, operation: schemathesis.APIOperation, run_id: str) -> dict:
    path = {
        k: v for k, v in (("org", server.org), ("flow_id", "fuzz")) if f"{{{k}}}" in operation.path
    }
    query: dict[str, str] = {}
    if operation.path in ("/stream_exported_flow", "/run_deployed_flow"):
        query = {"org": server.org, "flow_id": "fuzz"}
    elif "run_id" in {p.name for p in operation.query}:
        query = {"run_id": run_id}
    return {"path_parameters": path or None, "query": query or None}


def _fuzz(
    server: Server,
    operation: schemathesis.APIOperation,
    profile: Profile,
    run_id: str,
    tried: Counter,
    statuses: Counter,
    failures: list[str],
) -> None:
    aim = _aim(server, operation, run_id) if profile.aimed else {}
    strategy = operation.as_strategy(generation_mode=profile.mode, **aim)
    headers = _headers(server, operation, profile.key)
    checks = CHECKS + ([negative_data_rejection] if profile.mode.is_negative else [])

    @settings(
        max_examples=max(1, round(BUDGET * profile.share)),
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def one(case: schemathesis.Case) -> None:
        tried[profile.name] += 1
        try:
            response = case.call(base_url=server.base_url, headers=headers, timeout=30)
        except Exception as exc:  # the server hung up or timed out: as bad as a 500
            failures.append(f"{profile.name}: {type(exc).__name__}: {exc}"[:2000])
            return
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{profile.name}: [{response.status_code}] {exc}"[:2000])

    with contextlib.suppress(Unsatisfiable):  # nothing to negate, or everything is fixed
        one()


def test_every_route_survives_fuzzing(fuzz_server: Server):
    server = fuzz_server
    done = httpx.post(
        f"{server.base_url}/inference/v0/run/{server.org}/fuzz",
        headers=server.auth(),
        json={"in-0": "a run for the metadata route"},
        timeout=30,
    )
    run_id = done.json()["run_id"]
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", config=CONFIG)
    report: dict[str, tuple[Counter, Counter, list[str]]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        tried, statuses, failures = Counter(), Counter(), []
        for profile in PROFILES:
            _fuzz(server, operation, profile, run_id, tried, statuses, failures)
        report[operation.label] = (tried, statuses, failures)

    lines = [f"{'route':50} {'tried':>6}  statuses"]
    for label, (tried, statuses, _) in report.items():
        counts = " ".join(f"{code}:{n}" for code, n in sorted(statuses.items()))
        lines.append(f"{label:50} {sum(tried.values()):>6}  {counts}")
    print("\n".join(lines))
    found = {label: f for label, (_, _, f) in report.items() if f}
    assert not found, "\n\n".join(f"{label}:\n" + "\n".join(f[:3]) for label, f in found.items())
    assert len(report) >= 9 and all(sum(t.values()) > 0 for t, _, _ in report.values())
    assert server.process.poll() is None, "the server died"
    log = server.log()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-5000:]


def test_what_fuzzing_found_stays_fixed(fuzz_server: Server):
    server = fuzz_server
    # A long chain of nodes declared last-first: the graph checks recursed per node (500).
    lines = ["id: longchain", "inputs: {in-0: {default: x}}", "nodes:"]
    lines += [f'  n{i}: {{type: template, template: "{{n{i - 1}}}"}}' for i in range(1499, 0, -1)]
    lines += ['  n0: {type: template, template: "{in-0}"}', "outputs: {out-0: n1499}"]
    assert server.publish("\n".join(lines)).status_code == 201
    url = f"{server.base_url}/inference/v0/run/{server.org}/fuzz"
    headers = {**server.auth(), "Content-Type": "application/json"}
    # A body of non-JSON whitespace was taken for an empty body.
    refused = httpx.post(url, content=b"\x0b", headers=headers, timeout=30)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body"]
    # ``"user_id": null`` is accepted, and now documented as such.
    accepted = httpx.post(url, json={"user_id": None}, headers=headers, timeout=30)
    assert accepted.status_code == 200 and accepted.json()["state"] == "COMPLETED"
