"""Reading flow files: YAML (or JSON, which is YAML) into a validated :class:`Flow`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flowserve.errors import FlowValidationError
from flowserve.flows.spec import FlowSpec


class _UniqueKeyLoader(yaml.SafeLoader):
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


def parse_flow_data(text: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
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


def spec_from_data(data: Any) -> FlowSpec:
    try:
        return FlowSpec.model_validate(data)
    except ValidationError as exc:
        problems = [(_loc(err["loc"]), err["msg"]) for err in exc.errors()]
        raise FlowValidationError(problems) from None


def _loc(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    # pydantic puts the node type (the union's tag) in the path: nodes.b.llm.colour
    if len(parts) > 3 and parts[0] == "nodes" and parts[2] in ("llm", "template"):
        del parts[2]
    return ".".join(parts) or "flow"


def parse_flow_text(text: str) -> FlowSpec:
    return spec_from_data(parse_flow_data(text))


def load_flow_file(path: str | Path) -> FlowSpec:
    return parse_flow_text(Path(path).read_text(encoding="utf-8"))
