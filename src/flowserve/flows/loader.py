"""Reading flow files: YAML (or JSON, which is YAML) into a validated :class:`Flow`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from flowserve.errors import FlowValidationError
from flowserve.flows.spec import FlowSpec
from flowserve.nodes.registry import NodeRegistry, installed, unknown_type

# libyaml's parser when PyYAML was built with it (the wheels are): parsing a 1 MB flow file
# in pure Python took seconds.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses duplicate keys: PyYAML silently keeps the last one, which would
    hide a duplicated node id."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:
            raise FlowValidationError(
                [
                    (
                        "file",
                        f"line {key_node.start_mark.line + 1}: mapping keys must be plain strings",
                    )
                ]
            ) from None
        if duplicate:
            raise FlowValidationError(
                [(str(key), f"duplicate id {key!r} (line {key_node.start_mark.line + 1})")]
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _refuse_aliases(root: yaml.Node) -> None:
    """A flow file may not use YAML aliases (``*name``): 500 aliases of one 100,000-character
    anchor make a 120 KB file 50 MB of stored spec. The composer hands back the anchored node
    itself for each alias, so a node met twice in the tree is an alias (or a cycle)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            line = node.start_mark.line + 1 if node.start_mark is not None else "?"
            message = f"YAML aliases (*name) are not allowed in flow files (anchor on line {line})"
            raise FlowValidationError([("file", message)])
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append(key)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _load(text: str) -> Any:
    loader = _UniqueKeyLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _refuse_aliases(root)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def parse_flow_data(text: str) -> dict[str, Any]:
    try:
        data = _load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "file"
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise FlowValidationError([(where, str(problem))]) from None
    except RecursionError:
        raise FlowValidationError([("file", "nesting too deep")]) from None
    if not isinstance(data, dict):
        raise FlowValidationError(
            [("file", "a flow file must be a mapping with id, nodes, outputs")]
        )
    return data


def check_counts(data: dict[str, Any], max_nodes: int, max_outputs: int) -> None:
    """Refuse a flow with more nodes or outputs than the server allows, before the costlier
    validation and compilation (22,000 template nodes took seconds to compile)."""
    problems: list[tuple[str, str]] = []
    for section, limit, setting in (
        ("nodes", max_nodes, "max_flow_nodes"),
        ("outputs", max_outputs, "max_flow_outputs"),
    ):
        value = data.get(section)
        if isinstance(value, dict) and len(value) > limit:
            problems.append(
                (section, f"{len(value)} {section}; this server allows at most {limit} ({setting})")
            )
    if problems:
        raise FlowValidationError(problems)


def spec_from_data(data: Any, nodes: NodeRegistry | None = None) -> FlowSpec:
    """The flow file's model, each node parsed by its type's spec (``nodes``: the registry of
    node types; None: the installed ones)."""
    registry = nodes or installed()
    try:
        return registry.spec_model.model_validate(data)
    except ValidationError as exc:
        tags = set(registry.types)
        problems = [_problem(err, tags) for err in exc.errors()]
        raise FlowValidationError(problems) from None


def _problem(err: ErrorDetails, tags: set[str]) -> tuple[str, str]:
    parts = [str(p) for p in err["loc"]]
    if err["type"] in ("union_tag_invalid", "union_tag_not_found") and parts[:1] == ["nodes"]:
        # the node's ``type`` names no registered node type, or is missing
        known = sorted(tags)
        if err["type"] == "union_tag_not_found":
            message = f"a node needs a type (known: {', '.join(known)})"
        else:
            message = unknown_type((err.get("ctx") or {}).get("tag"), known)
        return ".".join([*parts, "type"]), message
    # pydantic puts the node type (the union's tag) in the path: nodes.b.llm.colour
    if len(parts) > 3 and parts[0] == "nodes" and parts[2] in tags:
        del parts[2]
    return ".".join(parts) or "flow", err["msg"]


def parse_flow_text(text: str, nodes: NodeRegistry | None = None) -> FlowSpec:
    return spec_from_data(parse_flow_data(text), nodes)


def load_flow_file(path: str | Path, nodes: NodeRegistry | None = None) -> FlowSpec:
    return parse_flow_text(Path(path).read_text(encoding="utf-8"), nodes)
