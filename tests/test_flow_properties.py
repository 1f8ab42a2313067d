"""Properties of the flow file parser, the graph compiler and the template renderer, over
arbitrary input (hypothesis): a flow file, whatever it holds, is either a flow or a
FlowValidationError naming the problem, never another exception (which the publish route
would answer with a 500); a template renders every value verbatim, never re-expanded."""

from __future__ import annotations

import re
import string

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flowserve.errors import FlowValidationError
from flowserve.flows import compile_flow, parse_flow_text
from flowserve.flows.graph import Flow
from flowserve.flows.template import NAME, Template, parse_template
from tests.helpers import registry

REGISTRY = registry(environ={})
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_and_compile(text: str) -> Flow | None:
    """The publish path: None when the file is refused the right way."""
    try:
        return compile_flow(parse_flow_text(text), REGISTRY)
    except FlowValidationError as exc:
        assert exc.problems and all(isinstance(loc, str) for loc, _ in exc.problems)
        return None


# --- flow files -------------------------------------------------------------------------------

KEYS = ["id", "name", "inputs", "nodes", "outputs", "type", "llm", "template", "prompt",
        "system", "model", "provider", "default", "memory", "window", "max_tokens", "stop",
        "temperature", "limits", "timeout", "in-0", "llm-0", "out-0", "<<"]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["{in-0}", "{llm-0}", "{{x}}", "scripted", "echo", "llm", "template"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5
        ),
    ),
    max_leaves=30,
)
NASTY = [
    "",
    "---\n...\n",
    "[",
    "id: x\nid: y\n",  # duplicate key
    "? [a, b]\n: c\n",  # a sequence as a key
    "? {a: 1}\n: c\n",
    "{null: 1, true: 2, 1.5: 3}",
    "!!python/object/apply:os.system ['true']",
    "id: !!binary aGVsbG8=\n",
    "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n",  # aliases
    "base: &b {type: template}\nnodes: {n: {<<: *b, template: hi}}\n",  # merge key
    "[" * 5000 + "]" * 5000,  # deep nesting
    "id: 2024-01-01\nnodes: {}\noutputs: {}\n",  # a date where a string belongs
    "id: f\noutputs: {o: 12}\n",
    "id: f\nnodes: {a: {type: template, template: '{a}'}}\noutputs: {o: a}\n",
    "\x00\x01",
    "id: f\ninputs: {in-0: {default: 1e999}}\n",
]


@SETTINGS
@given(st.text())
@example("\t")
@example("id: [")
def test_any_text_is_a_flow_or_a_validation_error(text: str):
    parse_and_compile(text)


@pytest.mark.parametrize("text", NASTY)
def test_nasty_yaml_is_a_validation_error(text: str):
    assert parse_and_compile(text) is None


@SETTINGS
@given(documents)
def test_any_yaml_document_is_a_flow_or_a_validation_error(document):
    parse_and_compile(yaml.safe_dump(document))


identifiers = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,6}\Z")
texts = st.text(alphabet=string.ascii_letters + " {}-_0", max_size=30)


@st.composite
def flows(draw) -> dict:
    """Near-valid flows: real fields, references that may or may not resolve, options that
    may or may not be allowed, cycles now and then."""
    inputs = draw(st.dictionaries(identifiers, st.fixed_dictionaries({}, optional={
        "default": st.text(max_size=5), "description": st.text(max_size=5)}), max_size=3))  # fmt: skip
    ids = draw(st.lists(identifiers, max_size=6, unique=True))
    known = list(inputs) + ids
    refs = st.sampled_from(known) if known else identifiers
    nodes = {}
    for node_id in ids:
        prompt = " ".join(f"{{{r}}}" for r in draw(st.lists(refs, max_size=3))) + draw(texts)
        if draw(st.booleans()):
            nodes[node_id] = {"type": "template", "template": prompt}
        else:
            node = {"type": "llm", "provider": draw(st.sampled_from(["scripted", "nope", None])),
                    "model": draw(st.sampled_from(["echo", "echo?delay=x", "other", None])),
                    "prompt": prompt}  # fmt: skip
            node.update(draw(st.fixed_dictionaries({}, optional={
                "max_tokens": st.integers(-2, 5), "temperature": st.floats(-1, 3),
                "top_p": st.floats(0, 1), "stop": st.lists(st.text(max_size=3), max_size=2),
                "memory": st.fixed_dictionaries({"window": st.integers(0, 300)}),
                "colour": st.just("red")})))  # fmt: skip
            nodes[node_id] = {k: v for k, v in node.items() if v is not None}
    outputs = draw(st.dictionaries(st.from_regex(r"\Aout-[0-9]\Z"), refs, max_size=3))
    return {"id": draw(identifiers), "inputs": inputs, "nodes": nodes, "outputs": outputs}


@settings(SETTINGS, max_examples=150)
@given(flows())
def test_structured_flows_compile_or_fail_cleanly_and_compiled_ones_are_consistent(data):
    flow = parse_and_compile(yaml.safe_dump(data, sort_keys=False))
    if flow is None:
        return
    position = {node_id: i for i, node_id in enumerate(flow.order)}
    assert sorted(flow.order) == sorted(flow.nodes)
    for node in flow.nodes.values():
        assert all(position[dep] < position[node.id] for dep in node.deps)
    known = set(flow.spec.inputs) | set(flow.nodes)
    assert set(flow.outputs.values()) <= known


def chain(n: int, reverse: bool, first_ref: str = "in-0") -> str:
    order = range(n - 1, 0, -1) if reverse else range(1, n)
    lines = ["id: chain", "inputs: {in-0: {default: x}}", "nodes:"]
    lines.append(f'  n0: {{type: template, template: "{{{first_ref}}}"}}')
    lines += [f'  n{i}: {{type: template, template: "{{n{i - 1}}}"}}' for i in order]
    return "\n".join([*lines, f"outputs: {{out-0: n{n - 1}}}"])


@pytest.mark.parametrize("reverse", [False, True])
def test_a_chain_of_thousands_of_nodes_compiles_in_any_order(reverse: bool):
    # Found by fuzzing: the cycle check and the topological sort recursed once per node, so
    # a long chain declared last-first raised RecursionError (a 500 on publish).
    flow = parse_and_compile(chain(1500, reverse))
    assert flow is not None and flow.order == tuple(f"n{i}" for i in range(1500))
    with pytest.raises(FlowValidationError, match="cycle: n0 -> n1499 -> "):
        compile_flow(parse_flow_text(chain(1500, reverse, first_ref="n1499")), REGISTRY)


# --- templates --------------------------------------------------------------------------------

names = st.from_regex(r"\A" + NAME + r"\Z").filter(lambda n: len(n) <= 12)
values = st.text(alphabet=st.characters(codec="utf-8"), max_size=20) | st.sampled_from(
    ["{in-0}", "{{", "}}", "{", "}", "{x}{y}"]
)


def escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def serialize(template: Template) -> str:
    """A template's canonical text: literals escaped, placeholders as {name}."""
    parts = template.parts
    return "".join(escape(p) if i % 2 == 0 else f"{{{p}}}" for i, p in enumerate(parts))


@SETTINGS
@given(st.text(), st.data())
def test_any_template_renders_with_any_values(text: str, data):
    template = parse_template(text)
    assert all(re.fullmatch(NAME, name) for name in template.names)
    given_values = {name: data.draw(values) for name in template.names}
    assert isinstance(template.render(given_values), str)
    # Its canonical text parses back to the same template.
    assert parse_template(serialize(template)) == template


@SETTINGS
@given(
    st.lists(st.one_of(st.tuples(st.just("text"), st.text()), st.tuples(st.just("name"), names)))
)
def test_values_are_inserted_verbatim_and_escapes_round_trip(segments):
    text = "".join(escape(v) if kind == "text" else f"{{{v}}}" for kind, v in segments)
    template = parse_template(text)
    assert template.names == tuple(v for kind, v in segments if kind == "name")
    # Each value, however many braces or placeholders it holds, appears exactly as given.
    rendered_values = {name: f"{{{name}}}{{{{ }}" for name in template.names}
    expected = "".join(v if kind == "text" else rendered_values[v] for kind, v in segments)
    assert template.render(rendered_values) == expected


@SETTINGS
@given(st.text())
def test_escaped_text_is_literal(text: str):
    template = parse_template(escape(text))
    assert template.names == ()
    assert template.render({}) == text
