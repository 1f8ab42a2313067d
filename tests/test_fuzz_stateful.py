"""Stateful fuzzing over HTTP (hypothesis state machine): publish generated flows, run them on
every run route with generated inputs, read the run records back, try to stop finished runs.

Every answer must be the one a user expects: the outputs equal what the flow computes (the
scripted ``echo`` model streams its prompt back), the record matches what the client saw, and
nothing answers 5xx."""

from __future__ import annotations

import itertools
import json
import os
import string
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from flowserve.client import Client
from flowserve.flows.template import parse_template
from tests import sse
from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow

STEPS = int(os.environ.get("FLOWSERVE_FUZZ_STEPS", "12"))  # per machine
MACHINES = int(os.environ.get("FLOWSERVE_FUZZ_MACHINES", "10"))
FLOW_NUMBERS = itertools.count()
ROUTES = ["legacy-stream", "legacy-run", "v0-run", "v0-stream"]
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
template_text = st.text(alphabet=string.ascii_letters + " {}.!", max_size=12).map(
    lambda t: t.replace("{", "{{").replace("}", "}}")
)


@dataclass(frozen=True)
class GenFlow:
    flow_id: str
    inputs: dict[str, str | None]  # name -> default
    nodes: dict[str, tuple[str, str]]  # id -> (type, template), in dependency order
    outputs: dict[str, str]

    def yaml(self) -> str:
        nodes = {}
        for node_id, (kind, text) in self.nodes.items():
            if kind == "llm":
                nodes[node_id] = {
                    "type": "llm",
                    "provider": "scripted",
                    "model": "echo",
                    "prompt": text,
                }
            else:
                nodes[node_id] = {"type": "template", "template": text}
        inputs = {k: ({"default": d} if d is not None else {}) for k, d in self.inputs.items()}
        # Escaped, not allow_unicode: PyYAML then writes U+0085 raw in a single-quoted scalar,
        # and YAML reads that as a line break folded to a space (found by this test).
        return yaml.safe_dump(
            {"id": self.flow_id, "inputs": inputs, "nodes": nodes, "outputs": self.outputs}
        )

    def expected(self, given: dict[str, str]) -> dict[str, str]:
        values = {k: given.get(k, d) for k, d in self.inputs.items()}
        for node_id, (_, text) in self.nodes.items():
            values[node_id] = parse_template(text).render(values)  # echo returns its prompt
        return {out: values[source] for out, source in self.outputs.items()}


@st.composite
def gen_flows(draw, flow_id: str) -> GenFlow:
    inputs = {f"in-{i}": draw(st.none() | texts) for i in range(draw(st.integers(1, 3)))}
    known = list(inputs)
    nodes: dict[str, tuple[str, str]] = {}
    for i in range(draw(st.integers(1, 4))):
        refs = draw(st.lists(st.sampled_from(known), min_size=1, max_size=3))
        text = "".join(draw(template_text) + f"{{{r}}}" for r in refs) + draw(template_text)
        node_id = f"n{i}"
        nodes[node_id] = (draw(st.sampled_from(["llm", "template"])), text)
        known.append(node_id)
    outputs = {f"out-{i}": draw(st.sampled_from(known)) for i in range(draw(st.integers(1, 3)))}
    return GenFlow(flow_id, inputs, nodes, outputs)


class PublishAndRun(RuleBasedStateMachine):
    server: Server  # set by the test
    flows = Bundle("flows")
    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.client = httpx.Client(base_url=self.server.base_url, timeout=30)

    def teardown(self) -> None:
        self.client.close()

    def check(self, response: httpx.Response, *expected: int) -> httpx.Response:
        assert response.status_code < 500, (response.status_code, response.text)
        assert response.status_code in expected, (response.status_code, response.text)
        return response

    @rule(target=flows, data=st.data())
    def publish(self, data) -> GenFlow:
        flow = data.draw(gen_flows(f"st{next(FLOW_NUMBERS)}"))  # new each time, even replayed
        response = self.server.publish(flow.yaml())
        self.check(response, 201)
        assert response.json()["version"] == 1
        again = self.check(self.server.publish(flow.yaml()), 200)  # unchanged: same version
        assert again.json() == {**response.json(), "created": False}
        return flow

    @rule(target=runs, flow=flows, route=st.sampled_from(ROUTES), data=st.data())
    def run(self, flow: GenFlow, route: str, data) -> tuple[GenFlow, str | None, dict]:
        required = [k for k, d in flow.inputs.items() if d is None]
        optional = [k for k, d in flow.inputs.items() if d is not None]
        given = {k: data.draw(texts) for k in required}
        given |= {k: data.draw(texts) for k in data.draw(st.lists(st.sampled_from(optional), unique=True))} if optional else {}  # fmt: skip
        org, server = self.server.org, self.server
        body = json.dumps(given).encode()
        headers = {**server.auth(), "Content-Type": "application/json"}
        run_id: str | None = None
        if route == "legacy-stream":
            url = f"/stream_exported_flow?flow_id={flow.flow_id}&org={org}"
            messages = list(
                sse.parse(
                    self.check(self.client.post(url, content=body, headers=headers), 200).text
                )
            )
            outputs, run_id = messages[-1].json(), messages[-1].id.split(":")[0]
        elif route == "legacy-run":
            url = f"/run_deployed_flow?flow_id={flow.flow_id}&org={org}"
            outputs = self.check(self.client.post(url, content=body, headers=headers), 200).json()
        elif route == "v0-run":
            url = f"/inference/v0/run/{org}/{flow.flow_id}"
            envelope = self.check(self.client.post(url, content=body, headers=headers), 200).json()
            assert envelope["state"] == "COMPLETED", envelope
            outputs, run_id = envelope["outputs"], envelope["run_id"]
        else:
            url = f"/inference/v0/stream/{org}/{flow.flow_id}"
            text = self.check(self.client.post(url, content=body, headers=headers), 200).text
            frames = [json.loads(line) for line in text.splitlines()]
            assert frames[-1]["state"] == "COMPLETED", frames[-1]
            outputs = {out: "".join(f["outputs"][out] for f in frames) for out in flow.outputs}
            run_id = frames[-1]["run_id"]
        expected = flow.expected(given)
        assert outputs == expected
        return flow, run_id, expected

    @rule(run=runs)
    def read_record(self, run: tuple[GenFlow, str | None, dict]) -> None:
        flow, run_id, expected = run
        if run_id is None:
            return
        url = f"/inference/v0/run/{self.server.org}/{flow.flow_id}/metadata?run_id={run_id}"
        record = self.check(self.client.get(url, headers=self.server.auth(self.server.private_key)), 200).json()  # fmt: skip
        assert record["state"] == "COMPLETED" and record["outputs"] == expected

    @rule(run=runs)
    def stop_a_finished_run(self, run: tuple[GenFlow, str | None, dict]) -> None:
        flow, run_id, _ = run
        url = f"/inference/v0/stop/{self.server.org}/{flow.flow_id}?run_id={run_id or 'none'}"
        self.check(self.client.post(url, headers=self.server.auth(self.server.private_key)), 404)

    @invariant()
    def healthy(self) -> None:
        self.check(self.client.get("/healthz"), 200)


@pytest.fixture(scope="module")
def stateful_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("stateful"), env={"FLOWSERVE_RATE_LIMIT_PER_MINUTE": "0"}
    )
    try:
        yield server
    finally:
        stop_server(server)


def test_publish_then_run_state_machine(stateful_server: Server):
    PublishAndRun.server = stateful_server
    machine = PublishAndRun.TestCase
    machine.settings = settings(
        max_examples=MACHINES,
        stateful_step_count=STEPS,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],  # explain: too slow over HTTP
        suppress_health_check=list(HealthCheck),
    )
    machine("runTest").runTest()
    log = stateful_server.log()
    assert "Traceback" not in log, log[-5000:]


def test_an_output_that_is_an_input_holds_its_value_from_the_first_frame(stateful_server: Server):
    # Found by the state machine: the first frame sent "" for every output, and an output
    # fed by an input never changed after it, so the legacy stream ended without its value.
    server = stateful_server
    flow = GenFlow(
        "passthrough", {"in-0": None}, {"n0": ("llm", "{in-0}!")}, {"out-0": "in-0", "out-1": "n0"}
    )
    assert server.publish(flow.yaml()).status_code == 201
    headers = {**server.auth(), "Content-Type": "application/json"}
    body = json.dumps({"in-0": "as given"})
    legacy = httpx.post(
        f"{server.base_url}/stream_exported_flow?flow_id=passthrough&org={server.org}",
        content=body,
        headers=headers,
        timeout=30,
    )
    outputs = [m.json() for m in sse.parse(legacy.text)]
    assert outputs[0] == {"out-0": "as given", "out-1": ""}
    assert outputs[-1] == {"out-0": "as given", "out-1": "as given!"}
    v0 = httpx.post(
        f"{server.base_url}/inference/v0/stream/{server.org}/passthrough",
        content=body,
        headers=headers,
        timeout=30,
    )
    frames = [json.loads(line) for line in v0.text.splitlines()]
    assert "".join(f["outputs"]["out-0"] for f in frames) == "as given"
    assert "".join(f["outputs"]["out-1"] for f in frames) == "as given!"


def test_line_separators_and_plus_signs_in_text_survive_every_stream(stateful_server: Server):
    # Found by the state machine: U+0085 / U+2028 / U+2029 left raw in a frame split it in
    # two for line readers (Python's splitlines, httpx's iter_lines, so flowserve's own
    # client); and the scripted model turned every "+" of its prompt into a space.
    server = stateful_server
    flow = GenFlow("separators", {"in-0": None}, {"n0": ("llm", "{in-0}")}, {"out-0": "n0"})
    assert server.publish(flow.yaml()).status_code == 201
    text = "a\u2028b \x85c\u2029d 1+1 \u2028"
    with Client(server.base_url, server.public_key, server.org) as client:
        updates = list(client.stream("separators", {"in-0": text}))
    assert updates[-1].state == "COMPLETED" and updates[-1].outputs == {"out-0": text}
    url = f"{server.base_url}/stream_exported_flow?flow_id=separators&org={server.org}"
    with httpx.stream("POST", url, json={"in-0": text}, headers=server.auth(), timeout=30) as r:
        lines = list(r.iter_lines())
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert data[-1] == {"out-0": text}
