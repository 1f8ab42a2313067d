"""Node-type registry, fed by the ``flowserve.nodes`` entry-point group.

The built-in types (``llm``, ``template``) register exactly like third-party ones (see
``pyproject.toml``): a node type is one module plus one line there. A registry is built once
by the composition root and handed to the flow loader, the compiler and, through each
compiled node, the runner; it does not change after it is built.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from flowserve.errors import ConfigError
from flowserve.nodes.base import NodeSpec, NodeType

if TYPE_CHECKING:
    from flowserve.flows.spec import FlowSpec

ENTRY_POINT_GROUP = "flowserve.nodes"


class NodeRegistry:
    def __init__(self, types: Iterable[NodeType[Any]]) -> None:
        by_name: dict[str, NodeType[Any]] = {}
        for node_type in types:
            name = _check(node_type)
            if name in by_name:
                raise ConfigError(f"node type {name!r} is registered twice")
            by_name[name] = node_type
        if not by_name:
            raise ConfigError("no node types are registered (entry points 'flowserve.nodes')")
        self.types: Mapping[str, NodeType[Any]] = MappingProxyType(by_name)
        self._spec_model: type[FlowSpec] | None = None

    @classmethod
    def from_entry_points(cls) -> NodeRegistry:
        """Every node type installed: the ``flowserve.nodes`` entry points, each naming a
        :class:`NodeType` subclass under its ``type:`` name."""
        types: list[NodeType[Any]] = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
            except Exception as exc:
                raise ConfigError(
                    f"node type {ep.name!r} ({ep.value}) does not load: {exc}"
                ) from exc
            if not (isinstance(loaded, type) and issubclass(loaded, NodeType)):
                raise ConfigError(f"entry point {ep.name!r} ({ep.value}) is not a NodeType")
            if getattr(loaded, "name", None) != ep.name:
                raise ConfigError(
                    f"entry point {ep.name!r} names node type "
                    f"{getattr(loaded, 'name', None)!r}; the two must be the same"
                )
            types.append(loaded())
        return cls(types)

    def names(self) -> list[str]:
        return sorted(self.types)

    def get(self, name: str) -> NodeType[Any]:
        node_type = self.types.get(name)
        if node_type is None:
            raise ConfigError(unknown_type(name, self.names()))
        return node_type

    @property
    def spec_model(self) -> type[FlowSpec]:
        """The flow-file model whose nodes are this registry's types (a discriminated union
        on ``type``), made once."""
        if self._spec_model is None:
            from flowserve.flows.spec import flow_spec_model  # flows.spec imports nodes.base

            specs = [self.types[name].Spec for name in self.names()]
            self._spec_model = flow_spec_model(specs)
        return self._spec_model


def unknown_type(name: object, known: Iterable[str]) -> str:
    return f"unknown node type {name!r} (known: {', '.join(known)})"


@functools.cache
def installed() -> NodeRegistry:
    """The node types installed, for callers that were given no registry (a flow file read
    by a script or a test); the server builds its own in the composition root."""
    return NodeRegistry.from_entry_points()


def _check(node_type: NodeType[Any]) -> str:
    """The type's name, after checking that its Spec is tagged with it."""
    name = getattr(node_type, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"node type {type(node_type).__name__} has no name")
    spec = getattr(node_type, "Spec", None)
    if not (isinstance(spec, type) and issubclass(spec, NodeSpec)):
        raise ConfigError(f"node type {name!r}: Spec must be a NodeSpec subclass")
    tag = spec.model_fields["type"].annotation
    if typing.get_origin(tag) is not typing.Literal or typing.get_args(tag) != (name,):
        raise ConfigError(f"node type {name!r}: its Spec needs type: Literal[{name!r}]")
    for field_name in node_type.templates:
        if field_name not in spec.model_fields:
            raise ConfigError(f"node type {name!r}: template field {field_name!r} not in Spec")
    return name
