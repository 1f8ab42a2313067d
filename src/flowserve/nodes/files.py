"""The ``files`` node (Stack AI's Files node, conventionally ``doc-0``): the documents the
request's ``user_id`` uploaded to this node through the Documents routes (knowledge
contract 3.5, 3.6). A run sees its own user's bucket only; a run without ``user_id`` sees an
empty one.

``mode: full`` (default) gives the text of every indexed file in the bucket, oldest first;
``mode: search`` searches the bucket with ``query`` like a ``knowledge_base`` node. Either
way the text is numbered for a prompt and the results are citations (``user_document``,
their ``url`` the Documents download route).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, runtime_checkable

from pydantic import Field

from flowserve.nodes._retrieval import (
    Retrieval,
    RetrievalSpec,
    emit,
    knowledge,
    pending_files,
    refuse_unsupported,
    required,
    search,
    strategy_problem,
)
from flowserve.nodes.base import CheckContext, CompileContext, Compiled, NodeContext, NodeType, Step

if TYPE_CHECKING:
    from flowserve.flows.graph import Node
    from flowserve.knowledge.service import Bucket, KnowledgeService


class FilesNodeSpec(RetrievalSpec):
    type: Literal["files"]
    mode: Literal["full", "search"] = "full"
    max_characters: int = Field(default=20000, ge=1, le=1_000_000)
    # the bucket's chunking is the server's (1500 / 500, sentence): refused by name
    chunker_params: Any = None


@runtime_checkable
class _Owner(Protocol):
    """Whose run it is: the run's memory knows its (org, flow, user), and exists only when
    the request named a user."""

    org_id: str
    flow_id: str
    user_id: str


async def _bucket(service: KnowledgeService, node_id: str, ctx: NodeContext) -> Bucket | None:
    owner = ctx.memory
    if not isinstance(owner, _Owner):  # no user_id: an empty bucket
        return None
    from flowserve.knowledge.service import Bucket

    row = await service.store.find_bucket(owner.org_id, owner.flow_id, node_id, owner.user_id)
    if row is None:
        return None
    return Bucket(row, owner.org_id, owner.flow_id, node_id, owner.user_id)


async def _documents(service: KnowledgeService, bucket: Bucket) -> list[dict[str, Any]]:
    """Every indexed file of the bucket, oldest first, as citations of whole documents."""
    from flowserve.knowledge.store import INDEXED

    files = [f for f in await service.store.all_files(bucket.row.id) if f.status == INDEXED]
    pages = await service.store.pages([f.id for f in files])
    found = []
    for index, row in enumerate(files, start=1):
        found.append(
            {
                "index": index,
                "node_id": bucket.node_id,
                "source": "user_document",
                "knowledge_base_id": None,
                "resource_id": row.id,
                "document_name": row.resource_path,
                "page": None,
                "chunk_index": None,
                "text": "\n\n".join(p.text for p in pages.get(row.id, [])),
                "score": 1.0,  # not ranked: every document is given
                "url": bucket.url(row.resource_path),
            }
        )
    return found


class FilesNode(NodeType[FilesNodeSpec]):
    name = "files"
    Spec = FilesNodeSpec
    templates = ("query",)

    def compile(self, spec: FilesNodeSpec, ctx: CompileContext) -> Compiled:
        refuse_unsupported(spec, ctx)
        if spec.chunker_params is not None:
            ctx.problem("chunker_params", "chunker_params is not supported by this server")
        if spec.mode == "search" and spec.query is None:
            ctx.problem("query", "mode 'search' needs a query")
        if spec.mode == "full":  # by value: a stored flow holds every field
            for name in ("query", "query_strategy", "top_k", "output_format"):
                if getattr(spec, name) != FilesNodeSpec.model_fields[name].default:
                    ctx.problem(name, f"{name} is used only with mode 'search'")
        return Compiled()

    async def check(self, spec: FilesNodeSpec, ctx: CheckContext) -> None:
        service = knowledge(ctx.services)
        if service is None:
            ctx.problem("type", "per-user documents are not available on this server")
            return
        vectors = service.settings.default_embedding_model is not None
        problem = strategy_problem(service, spec.query_strategy, vectors)
        if problem is not None:
            ctx.problem("query_strategy", problem)

    async def run(self, node: Node, ctx: NodeContext) -> AsyncIterator[Step]:
        started = time.perf_counter()
        spec = cast(FilesNodeSpec, node.spec)
        service = required(ctx.services)
        bucket = await _bucket(service, node.id, ctx)
        ids = [] if bucket is None else [bucket.row.id]
        extra: Mapping[str, Any] = {"source": "user_document", "mode": spec.mode}
        pending = await pending_files(service, ids)
        if spec.mode == "full":
            retrieval = Retrieval(node.id, None, [], None, "docs", None, started, pending, extra)
            citations = [] if bucket is None else await _documents(service, bucket)
        else:
            query = ctx.render("query")
            strategy = spec.query_strategy or (
                service.default_strategy([bucket.row]) if bucket else "keyword"
            )
            retrieval = Retrieval(
                node.id, query, [], strategy, spec.output_format, spec.top_k, started, pending,
                extra,
            )  # fmt: skip
            citations = []
            if bucket is not None:
                citations = await search(service, ids, query, spec, strategy, node.id, bucket)
        async for step in emit(retrieval, spec, citations):
            yield step
