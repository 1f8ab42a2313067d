"""Compiling a :class:`FlowSpec` into a checked DAG.

Every check that can be made before a run is made here, when a flow is loaded or published,
and each problem names the node and field: unknown reference, cycle, duplicate id, unknown
provider or model, output pointing nowhere, bad option. Missing provider credentials are a
*warning* (flows are often published from machines that do not hold production keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

from pydantic import ValidationError

from flowserve.errors import ConfigError, FlowValidationError, InputError
from flowserve.flows.spec import FlowSpec, LLMNodeSpec, TemplateNodeSpec
from flowserve.flows.template import Template, parse_template
from flowserve.providers.endpoints import EndpointError
from flowserve.providers.registry import ProviderRegistry


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    spec: LLMNodeSpec | TemplateNodeSpec
    deps: tuple[str, ...]
    templates: Mapping[str, Template]  # field name -> parsed template
    model: str | None = None
    provider: str | None = None  # resolved provider name (llm nodes)
    options: Mapping[str, Any] = field(default_factory=dict)
    # the node's base_url as checked by the endpoint policy and rebuilt from its parsed parts:
    # what the provider is given, never the file's raw string
    base_url: str | None = None

    @property
    def is_llm(self) -> bool:
        return isinstance(self.spec, LLMNodeSpec)


@dataclass(frozen=True, slots=True)
class Flow:
    spec: FlowSpec
    nodes: Mapping[str, Node]
    order: tuple[str, ...]  # a topological order of the nodes
    warnings: tuple[str, ...] = ()
    # LLM nodes whose prompt the inputs alone decide, on a provider that can refuse a prompt
    # before the run (too long for its context): checked before a run starts, for a 4xx
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


def _templates(spec: LLMNodeSpec | TemplateNodeSpec) -> dict[str, Template]:
    if isinstance(spec, TemplateNodeSpec):
        return {"template": parse_template(spec.template)}
    out = {"prompt": parse_template(spec.prompt)}
    if spec.system is not None:
        out["system"] = parse_template(spec.system)
    return out


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


def _check_llm(
    node_id: str, spec: LLMNodeSpec, registry: ProviderRegistry
) -> tuple[list[tuple[str, str]], list[str], str | None, dict[str, Any], str | None]:
    problems: list[tuple[str, str]] = []
    warnings: list[str] = []
    loc = f"nodes.{node_id}"
    provider_name = spec.provider or registry.default
    try:
        provider_cls = registry.provider_class(provider_name)
    except ConfigError as exc:
        return [(f"{loc}.provider", exc.message)], [], None, {}, None
    provider = registry.get(provider_name)
    model = spec.model or provider_cls.default_model
    if model is None:
        problems.append((f"{loc}.model", f"provider {provider_name!r} needs a model"))
    elif (problem := provider.check_model(model)) is not None:
        problems.append((f"{loc}.model", problem))
    base_url: str | None = None
    if spec.base_url is not None:
        try:
            base_url = registry.policy.check_base_url(spec.base_url)
        except EndpointError as exc:
            problems.append((f"{loc}.base_url", f"base_url {exc}"))
    if spec.api_key_env is not None and (bad := registry.policy.key_env_problem(spec.api_key_env)):
        problems.append((f"{loc}.api_key_env", bad))
    options: dict[str, Any] = {}
    try:
        validated = provider_cls.Options.model_validate(spec.options())
        options = validated.model_dump(exclude_none=True)
    except ValidationError as exc:
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "options"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = f"option not supported by provider {provider_name!r}"
            problems.append((f"{loc}.{name}", msg))
    if (var := provider.missing_credentials(spec.api_key_env)) is not None:
        warnings.append(
            f"{loc}: environment variable {var} is not set; runs of this node will fail until it is"
        )
    return problems, warnings, model, options, base_url


def compile_flow(spec: FlowSpec, registry: ProviderRegistry) -> Flow:
    problems: list[tuple[str, str]] = []
    warnings: list[str] = []
    for node_id in spec.nodes:
        if node_id in spec.inputs:
            problems.append((f"nodes.{node_id}", f"duplicate id {node_id!r}: already an input"))
    known = set(spec.inputs) | set(spec.nodes)

    deps: dict[str, tuple[str, ...]] = {}
    templates: dict[str, dict[str, Template]] = {}
    for node_id, node_spec in spec.nodes.items():
        templates[node_id] = _templates(node_spec)
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

    models: dict[str, str | None] = {}
    options: dict[str, dict[str, Any]] = {}
    base_urls: dict[str, str | None] = {}
    for node_id, node_spec in spec.nodes.items():
        if isinstance(node_spec, LLMNodeSpec):
            p, w, models[node_id], options[node_id], base_urls[node_id] = _check_llm(
                node_id, node_spec, registry
            )
            problems += p
            warnings += w

    if problems:
        raise FlowValidationError(problems)
    nodes = {
        node_id: Node(
            id=node_id,
            spec=node_spec,
            deps=deps[node_id],
            templates=templates[node_id],
            model=models.get(node_id),
            provider=(node_spec.provider or registry.default)
            if isinstance(node_spec, LLMNodeSpec)
            else None,
            options=options.get(node_id, {}),
            base_url=base_urls.get(node_id),
        )
        for node_id, node_spec in spec.nodes.items()
    }
    prompt_checked = tuple(
        node_id
        for node_id, node in nodes.items()
        if node.is_llm
        and not node.deps
        and registry.provider_class(node.provider or registry.default).checks_prompts
    )
    return Flow(
        spec=spec,
        nodes=nodes,
        order=order,
        warnings=tuple(warnings),
        prompt_checked=prompt_checked,
    )
