"""Node types are plugins, like providers: one module per type (its flow-file fields and how
it runs), registered through the ``flowserve.nodes`` entry-point group. The built-in
``llm`` and ``template`` types register exactly like a third-party one would::

    [project.entry-points."flowserve.nodes"]
    shout = "my_package.shout:ShoutNode"

The surface (``flowserve.nodes.base``):

- :class:`NodeType`: ``name`` (its ``type:``), ``Spec`` (a :class:`NodeSpec` subclass with
  ``type: Literal[name]``), ``templates`` (the fields whose ``{names}`` are its edges);
  ``compile(spec, ctx)``: sync checks at compile, reported with ``ctx.problem(field, msg)``,
  returning :class:`Compiled` (the provider and model it calls, options, its own data);
  ``check(spec, ctx)``: async checks at publish, with the org and the services the
  composition root passes to node types; ``precheck(node, ctx)``: a refusal known before a
  run (422); ``run(node, ctx)``: an async iterator of steps — text (``str``), a
  :class:`Stream` of chunks the runner relays itself (the per-token path), and
  :class:`~flowserve.events.NodeResults` (citations, kept with the run);
- :class:`NodeContext`: what a run gives it — ``render(field)`` (size-checked templates),
  the providers, memory, retry policy and limits, ``services``, ``usage`` to report;
- :class:`NodeRegistry` (``flowserve.nodes.registry``): the types, from the entry points,
  built once by the composition root. The runner and the graph compiler name no type.
"""

from flowserve.nodes.base import (
    CheckContext,
    CompileContext,
    Compiled,
    NodeContext,
    NodeSpec,
    NodeType,
    Step,
    Stream,
)
from flowserve.nodes.registry import ENTRY_POINT_GROUP, NodeRegistry

__all__ = [
    "ENTRY_POINT_GROUP",
    "CheckContext",
    "CompileContext",
    "Compiled",
    "NodeContext",
    "NodeRegistry",
    "NodeSpec",
    "NodeType",
    "Step",
    "Stream",
]
