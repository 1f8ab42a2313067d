"""The ``knowledge_base`` node: its ``query`` rendered from its edges, searched in one to
eight knowledge bases of the flow's org; its text is the numbered context for a prompt
(``{kb-0}``), and its results are the run's citations (knowledge contract 3.6, 3.7).

At compile: the ids are UUIDs, each once; unsupported search settings are refused by name.
At publish: every KB is one of the org's, and ``semantic``/``hybrid`` only over KBs with
vectors. At run: a KB deleted since fails the node (``knowledge_base_not_found``); files not
indexed yet are skipped and counted; an empty query finds nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Literal, cast

from pydantic import Field

from flowserve.errors import NotFoundError
from flowserve.nodes._retrieval import (
    Retrieval,
    RetrievalSpec,
    emit,
    has_vectors,
    knowledge,
    knowledge_bases,
    pending_files,
    refuse_unsupported,
    required,
    search,
    strategy_problem,
)
from flowserve.nodes.base import CheckContext, CompileContext, Compiled, NodeContext, NodeType, Step

if TYPE_CHECKING:
    from flowserve.flows.graph import Node

MAX_KNOWLEDGE_BASES = 8


class KnowledgeBaseNodeSpec(RetrievalSpec):
    type: Literal["knowledge_base"]
    knowledge_base_ids: Annotated[
        list[uuid.UUID], Field(min_length=1, max_length=MAX_KNOWLEDGE_BASES)
    ]
    query: str  # required here


def _ids(spec: KnowledgeBaseNodeSpec) -> list[str]:
    return [str(kb_id) for kb_id in spec.knowledge_base_ids]


class KnowledgeBaseNode(NodeType[KnowledgeBaseNodeSpec]):
    name = "knowledge_base"
    Spec = KnowledgeBaseNodeSpec
    templates = ("query",)

    def compile(self, spec: KnowledgeBaseNodeSpec, ctx: CompileContext) -> Compiled:
        refuse_unsupported(spec, ctx)
        ids = _ids(spec)
        if len(set(ids)) != len(ids):
            ctx.problem("knowledge_base_ids", "a knowledge base is listed more than once")
        return Compiled()

    async def check(self, spec: KnowledgeBaseNodeSpec, ctx: CheckContext) -> None:
        service = knowledge(ctx.services)
        if service is None:
            ctx.problem("type", "knowledge bases are not available on this server")
            return
        rows = []
        for kb_id in dict.fromkeys(_ids(spec)):
            try:  # another org's KB is the same "not found" as an unknown one
                rows.append(await service.store.get_kb(ctx.org_id, kb_id))
            except NotFoundError:
                ctx.problem("knowledge_base_ids", f"knowledge base {kb_id} not found")
        if len(rows) == len(spec.knowledge_base_ids):
            problem = strategy_problem(service, spec.query_strategy, has_vectors(rows))
            if problem is not None:
                ctx.problem("query_strategy", problem)

    async def run(self, node: Node, ctx: NodeContext) -> AsyncIterator[Step]:
        started = time.perf_counter()
        spec = cast(KnowledgeBaseNodeSpec, node.spec)
        service = required(ctx.services)
        ids = _ids(spec)
        rows = await knowledge_bases(service, ids)  # fails the node if one was deleted
        query = ctx.render("query")
        strategy = spec.query_strategy or service.default_strategy(rows)
        retrieval = Retrieval(
            node.id, query, ids, strategy, spec.output_format, spec.top_k, started,
            await pending_files(service, ids),
        )  # fmt: skip
        citations = await search(service, ids, query, spec, strategy, node.id)
        async for step in emit(retrieval, spec, citations):
            yield step
