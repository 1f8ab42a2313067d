"""The flow file format, as pydantic models. Structure only; graph checks live in graph.py.

The fields of each node are its type's (``flowserve.nodes``): :class:`FlowSpec` declares
``nodes`` as the base :class:`NodeSpec`, and :func:`flow_spec_model` makes the model a
registry parses with, whose nodes are a union of its types' specs tagged by ``type``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from flowserve.nodes.base import NodeSpec

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    description: str = ""
    default: str | None = None


class FlowLimits(_Strict):
    """Time limits of one run, in seconds; unset ones take the server's defaults
    (``run_timeout``, ``run_idle_timeout``). A run over either is FAILED (error_type
    ``timeout``)."""

    timeout: float | None = Field(default=None, gt=0, le=86_400)  # total run time
    idle_timeout: float | None = Field(default=None, gt=0, le=86_400)  # no token for this long


class ChatSpec(_Strict):
    """Which input a chat message fills and which output is the reply: for the chat page and
    ``/v1/chat/completions``. Unset fields mean the flow's first input and first output."""

    input: Identifier | None = None
    output: Identifier | None = None


class FlowSpec(_Strict):
    id: Identifier
    name: str = ""
    description: str = ""
    inputs: dict[Identifier, InputSpec] = Field(default_factory=dict)
    nodes: dict[Identifier, NodeSpec] = Field(default_factory=dict)
    outputs: dict[Identifier, Identifier]
    limits: FlowLimits | None = None
    chat: ChatSpec | None = None


def flow_spec_model(specs: Sequence[type[NodeSpec]]) -> type[FlowSpec]:
    """A :class:`FlowSpec` whose nodes are parsed by their ``type`` into one of ``specs``
    (pydantic's discriminated union: an unknown or missing type is one error at the node)."""
    node: Any = Annotated[Union[tuple(specs)], Field(discriminator="type")]  # noqa: UP007
    return create_model(
        "FlowSpec",
        __base__=FlowSpec,
        nodes=(dict[Identifier, node], Field(default_factory=dict)),
    )
