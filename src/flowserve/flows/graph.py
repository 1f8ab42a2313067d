"""Compiling a :class:`FlowSpec` into a checked DAG.

Every check that can be made before a run is made here, when a flow is loaded or published,
and each problem names the node and field: duplicate id, unknown reference, cycle, output
pointing nowhere; then each node's own checks, by its type (``flowserve.nodes``: an unknown
provider or model, a bad option), and at publish its type's async checks
(:func:`check_flow`). Missing provider credentials are a *warning* (flows are often published
from machines that do not hold production keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

from flowserve.errors import ConfigError, FlowValidationError, InputError
from flowserve.flows.spec import FlowSpec
from flowserve.flows.template import Template, parse_template
from flowserve.nodes.base import CheckContext, CompileContext, Compiled, NodeSpec, NodeType
from flowserve.nodes.registry import NodeRegistry, installed
from flowserve.providers.registry import ProviderRegistry


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    spec: NodeSpec  # its type's Spec
    kind: NodeType[Any]  # its type: how it runs
    deps: tuple[str, ...]
    templates: Mapping[str, Template]  # field name -> parsed template
    # what its type's compile step found (flowserve.nodes.base.Compiled)
    provider: str | None = None  # the provider it calls (resolved name), None if none
    model: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    data: Any = None  # its type's own, for its runs


@dataclass(frozen=True, slots=True)
class Flow:
    spec: FlowSpec
    nodes: Mapping[str, Node]
    order: tuple[str, ...]  # a topological order of the nodes
    warnings: tuple[str, ...] = ()
    # nodes the inputs alone decide whose type can refuse them before the run (an LLM
    # prompt too long for its model's context: NodeType.precheck), asked first, for a 4xx
    prompt_checked: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def outputs(self) -> Mapping[str, str]:
        return self.spec.outputs

    @property
    def chat_pair(self) -> tuple[str | None, str]:
        """(input, output) of a chat turn: the flow's ``chat`` section, else its first input
        (None for a flow without inputs) and first output. Checked when compiled."""
        chat = self.spec.chat
        first_input = next(iter(self.spec.inputs), None)
        first_output = next(iter(self.spec.outputs))
        if chat is None:
            return first_input, first_output
        return chat.input or first_input, chat.output or first_output

    def resolve_inputs(self, given: Mapping[str, Any]) -> dict[str, str]:
        """Apply defaults and check names and types. Raises InputError naming the field."""
        for name, value in given.items():
            if name not in self.spec.inputs:
                raise InputError(f"unknown input {name!r}", ("body", name))
            if not isinstance(value, str):
                raise InputError(f"input {name!r} must be a string", ("body", name))
        values: dict[str, str] = {}
        for name, spec in self.spec.inputs.items():
            if name in given:
                values[name] = given[name]
            elif spec.default is not None:
                values[name] = spec.default
            else:
                raise InputError(f"input {name!r} is required", ("body", name))
        return values


def _templates(spec: NodeSpec, kind: NodeType[Any]) -> dict[str, Template]:
    templates: dict[str, Template] = {}
    for name in kind.templates:
        text = getattr(spec, name)
        if text is not None:
            templates[name] = parse_template(text)
    return templates


def _order(deps: Mapping[str, tuple[str, ...]]) -> tuple[tuple[str, ...], list[str] | None]:
    """The nodes in an order that puts each after the nodes it depends on, and no cycle; or
    no order and a cycle as a path ``[a, b, …, a]`` in which each node references the next.

    The order is :mod:`graphlib`'s (iterative: a published flow may chain thousands of nodes,
    past Python's recursion limit): the nodes that depend on none, in the file's order, then
    wave by wave those whose dependencies are all placed. It depends on the file alone."""
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for node_id in deps:
        sorter.add(node_id)  # first, so that ready nodes keep the file's order
    for node_id, node_deps in deps.items():
        sorter.add(node_id, *node_deps)
    try:
        return tuple(sorter.static_order()), None
    except CycleError as exc:
        # graphlib's path goes from each node to one that depends on it; the flow file reads
        # the other way (a references b), and so does the message.
        return (), exc.args[1][::-1]


def compile_flow(
    spec: FlowSpec, registry: ProviderRegistry, nodes: NodeRegistry | None = None
) -> Flow:
    """Check ``spec`` and compile it (``nodes``: the node types; None: the installed ones).
    Raises FlowValidationError listing every problem found."""
    types = nodes or installed()
    problems: list[tuple[str, str]] = []
    warnings: list[str] = []
    for node_id in spec.nodes:
        if node_id in spec.inputs:
            problems.append((f"nodes.{node_id}", f"duplicate id {node_id!r}: already an input"))
    known = set(spec.inputs) | set(spec.nodes)

    kinds: dict[str, NodeType[Any]] = {}
    deps: dict[str, tuple[str, ...]] = {}
    templates: dict[str, dict[str, Template]] = {}
    for node_id, node_spec in spec.nodes.items():
        try:
            kinds[node_id] = kind = types.get(node_spec.type)
        except ConfigError as exc:  # parsed with node types this registry does not have
            problems.append((f"nodes.{node_id}.type", exc.message))
            deps[node_id] = ()
            continue
        templates[node_id] = _templates(node_spec, kind)
        refs: list[str] = []
        for field_name, template in templates[node_id].items():
            for name in template.names:
                if name not in known:
                    problems.append(
                        (f"nodes.{node_id}.{field_name}", f"unknown reference {{{name}}}")
                    )
                elif name == node_id:
                    problems.append(
                        (f"nodes.{node_id}.{field_name}", "a node cannot reference itself")
                    )
                elif name not in refs:
                    refs.append(name)
        deps[node_id] = tuple(r for r in refs if r in spec.nodes)

    order, cycle = _order(deps)
    if cycle is not None:
        problems.append((f"nodes.{cycle[0]}", "cycle: " + " -> ".join(cycle)))

    for out_id, source in spec.outputs.items():
        if source not in known:
            problems.append((f"outputs.{out_id}", f"points to unknown node or input {source!r}"))
    if not spec.outputs:
        problems.append(("outputs", "a flow needs at least one output"))
    if spec.chat is not None:
        if spec.chat.input is not None and spec.chat.input not in spec.inputs:
            problems.append(("chat.input", f"unknown input {spec.chat.input!r}"))
        if spec.chat.output is not None and spec.chat.output not in spec.outputs:
            problems.append(("chat.output", f"unknown output {spec.chat.output!r}"))

    compiled: dict[str, Compiled] = {}
    for node_id, kind in kinds.items():
        ctx = CompileContext(node_id, registry, problems, warnings)
        compiled[node_id] = kind.compile(spec.nodes[node_id], ctx)

    if problems:
        raise FlowValidationError(problems)
    flow_nodes = {
        node_id: Node(
            id=node_id,
            spec=spec.nodes[node_id],
            kind=kind,
            deps=deps[node_id],
            templates=templates[node_id],
            provider=compiled[node_id].provider,
            model=compiled[node_id].model,
            options=compiled[node_id].options,
            data=compiled[node_id].data,
        )
        for node_id, kind in kinds.items()
    }
    prompt_checked = tuple(
        node_id
        for node_id, node in flow_nodes.items()
        if compiled[node_id].prechecked and not node.deps
    )
    return Flow(
        spec=spec,
        nodes=flow_nodes,
        order=order,
        warnings=tuple(warnings),
        prompt_checked=prompt_checked,
    )


async def check_flow(flow: Flow, org_id: str, services: Mapping[str, Any]) -> None:
    """The node types' checks at publish that need I/O (:meth:`NodeType.check`), for
    ``org_id``; ``services`` is what the composition root passes to node types. Raises
    FlowValidationError listing their problems."""
    problems: list[tuple[str, str]] = []
    for node_id, node in flow.nodes.items():
        await node.kind.check(node.spec, CheckContext(node_id, org_id, services, problems))
    if problems:
        raise FlowValidationError(problems)
