"""The ``template`` node: its one template rendered from its edges, as one piece of text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal

from flowserve.nodes.base import NodeContext, NodeSpec, NodeType, Step

if TYPE_CHECKING:
    from flowserve.flows.graph import Node


class TemplateNodeSpec(NodeSpec):
    type: Literal["template"]
    template: str


class TemplateNode(NodeType[TemplateNodeSpec]):
    name = "template"
    Spec = TemplateNodeSpec
    templates = ("template",)

    async def run(self, node: Node, ctx: NodeContext) -> AsyncIterator[Step]:
        # measured before it is built: its size against the node's and the run's limits
        yield ctx.render("template", output=True)
