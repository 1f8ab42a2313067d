"""What the ``knowledge_base`` and ``files`` nodes share (knowledge contract 3.6, 3.7): their
search fields, the publish checks of a query strategy, the search itself, the numbered
context they output and the citations and retrieval details they record.

The context numbers its results for the prompt (``[1] handbook.pdf, page 3\\n<text>\\n\\n[2]
...``); the number is the citation's ``index``. ``max_characters`` caps the whole text: the
results that do not fit are dropped from the end, the last one that partly fits is cut, and
each citation's ``text`` is what the model was given. The retrieved text is data: it becomes
the node's value, and templates downstream insert it verbatim (flowserve.flows.template).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field
from sqlalchemy import select

from flowserve.errors import KnowledgeBaseNotFoundError, NodeError
from flowserve.events import NodeResults
from flowserve.nodes.base import CompileContext, NodeSpec, Step

if TYPE_CHECKING:
    from flowserve.knowledge.models import KnowledgeBase
    from flowserve.knowledge.service import Bucket, KnowledgeService

Strategy = Literal["semantic", "keyword", "hybrid"]
OutputFormat = Literal["chunks", "pages", "docs"]

# Stack AI search settings this server does not implement: refused, never silently ignored.
UNSUPPORTED = (
    "rerank",
    "query_transformation",
    "advanced_qa",
    "answer_multiple_questions",
    "metadata_filter",
    "metadata_filters",
    "metadata_filter_strategy",
)
_OFF: tuple[Any, ...] = (None, False, "none", "", [], {})  # values that ask for nothing


class RetrievalSpec(NodeSpec):
    """The search fields of both node types (their defaults are contract 3.6's)."""

    query: str | None = None  # a template, e.g. "{in-0}"
    output_format: OutputFormat = "chunks"
    # None: hybrid where every KB searched has vectors (and the server can embed), else keyword
    query_strategy: Strategy | None = None
    top_k: int = Field(default=10, ge=1, le=100)
    max_characters: int = Field(default=5000, ge=1, le=1_000_000)
    citations: bool = True
    # declared so that they are refused by name ("not supported"), not as unknown fields
    rerank: Any = None
    query_transformation: Any = None
    advanced_qa: Any = None
    answer_multiple_questions: Any = None
    metadata_filter: Any = None
    metadata_filters: Any = None
    metadata_filter_strategy: Any = None


def refuse_unsupported(spec: NodeSpec, ctx: CompileContext) -> None:
    for name in UNSUPPORTED:
        if getattr(spec, name, None) not in _OFF:
            ctx.problem(name, f"{name} is not supported by this server")


def knowledge(services: Mapping[str, Any]) -> KnowledgeService | None:
    """The knowledge service the composition root passes to node types (None: none)."""
    return services.get("knowledge")


def required(services: Mapping[str, Any]) -> KnowledgeService:
    service = knowledge(services)
    if service is None:
        raise NodeError("knowledge bases are not available on this server")
    return service


def strategy_problem(service: KnowledgeService, requested: str | None, vectors: bool) -> str | None:
    """Why ``requested`` cannot search these KBs (``vectors``: every one has an embedding
    model), or None."""
    if requested is None or requested == "keyword":
        return None
    if not vectors:
        return (
            f"query_strategy {requested!r} needs vectors: a knowledge base searched has no "
            "embedding model; use 'keyword'"
        )
    if requested not in service.index.strategies:
        return f"query_strategy {requested!r} is not available on this server; use 'keyword'"
    return None


def has_vectors(rows: Sequence[KnowledgeBase]) -> bool:
    return all(row.indexing_params["embedding_params"]["embedding_model"] for row in rows)


async def knowledge_bases(service: KnowledgeService, ids: Sequence[str]) -> list[KnowledgeBase]:
    """The KBs ``ids`` name, in that order; KnowledgeBaseNotFoundError for one that is gone.
    By id alone: they were checked against the flow's org when it was published, and a KB's
    id (a random UUID) never comes back."""
    from flowserve.knowledge.models import KB, KnowledgeBase

    query = select(KnowledgeBase).where(KnowledgeBase.id.in_(ids), KnowledgeBase.kind == KB)
    async with service.store.db.session() as s:
        found = {row.id: row for row in (await s.scalars(query)).all()}
    for kb_id in ids:
        if kb_id not in found:
            raise KnowledgeBaseNotFoundError(
                f"knowledge base {kb_id} not found (deleted after the flow was published?)"
            )
    return [found[kb_id] for kb_id in ids]


async def pending_files(service: KnowledgeService, ids: Sequence[str]) -> int:
    """Files of these KBs not indexed yet (queued or being parsed): not searched."""
    counts = await service.store.counts(ids)
    return sum(c.files - c.indexed - c.errors for c in counts.values())


async def search(
    service: KnowledgeService,
    ids: Sequence[str],
    query: str,
    spec: RetrievalSpec,
    strategy: str,
    node_id: str,
    bucket: Bucket | None = None,
) -> list[dict[str, Any]]:
    """The citations of a search, best first, numbered from 1 (before ``max_characters``)."""
    if not query.strip():
        return []
    top_k = spec.top_k
    # pages and docs gather several chunks each: look further than what is kept
    deep = top_k if spec.output_format == "chunks" else min(top_k * 5, 500)
    hits = await service.index.search(ids, query, deep, strategy)
    return await service.citations(hits, spec.output_format, top_k, node_id, bucket)


def label(citation: Mapping[str, Any]) -> str:
    page = citation.get("page")
    head = f"[{citation['index']}] {citation['document_name']}"
    return head if page is None else f"{head}, page {page}"


def numbered(
    citations: Sequence[dict[str, Any]], max_characters: int
) -> tuple[str, list[dict[str, Any]]]:
    """The node's text and the citations it holds, each with the text it was given."""
    pieces: list[str] = []
    kept: list[dict[str, Any]] = []
    used = 0
    for citation in citations:
        head = ("\n\n" if pieces else "") + label(citation) + "\n"
        room = max_characters - used - len(head)
        if room <= 0:
            break
        full = str(citation["text"])
        text = full[:room]
        pieces.append(head + text)
        used += len(head) + len(text)
        kept.append({**citation, "text": text})
        if len(text) < len(full):
            break
    return "".join(pieces), kept


@dataclass(frozen=True, slots=True)
class Retrieval:
    """What one retrieving node did, for the run's ``retrievals`` (contract 3.7)."""

    node_id: str
    query: str | None
    knowledge_base_ids: list[str]
    query_strategy: str | None
    output_format: str
    top_k: int | None
    started: float  # time.perf_counter() when the node began
    skipped_pending_files: int = 0
    extra: Mapping[str, Any] | None = None  # what a node type adds (the files node's mode)

    def details(self, results: int) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "query": self.query,
            "knowledge_base_ids": self.knowledge_base_ids,
            "query_strategy": self.query_strategy,
            "output_format": self.output_format,
            "top_k": self.top_k,
            "results": results,
            "skipped_pending_files": self.skipped_pending_files,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
            **(self.extra or {}),
        }


async def emit(
    retrieval: Retrieval, spec: RetrievalSpec, citations: Sequence[dict[str, Any]]
) -> AsyncIterator[Step]:
    """The node's steps: its numbered text (none when nothing was found), then its results
    (the citations only with ``citations: true``)."""
    text, kept = numbered(citations, spec.max_characters)
    if text:
        yield text
    yield NodeResults(
        retrieval.node_id, kept if spec.citations else [], retrieval.details(len(kept))
    )
