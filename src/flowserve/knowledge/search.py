"""Retrieval behind one interface: :class:`Index`. ``search(kb_ids, query, top_k, strategy)``
gives :class:`Hit` objects, best first, scores in [0, 1] comparable within one search.

Each way of finding chunks is a :class:`Retriever` registered by its strategy: ``keyword``
is built in (below); ``semantic`` (vectors) plugs in beside it, and ``hybrid`` fuses the two
rankings by reciprocal rank (:func:`fuse`, k = 60). Scores are normalised per contract 3.7:
keyword and hybrid scores are divided by the best one; semantic ones are cosine similarities
clipped at 0, left as the retriever gives them.

**Keyword search** (:mod:`flowserve.knowledge.keyword`) is the database's full-text index;
**semantic** search is :mod:`flowserve.knowledge.vectors`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from flowserve.errors import InputError

MAX_TERMS = 32
RRF_K = 60
_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: int
    knowledge_base_id: str
    resource_id: str
    document_name: str
    chunk_index: int
    text: str
    page: int | None
    heading: str | None
    start: int  # offsets in the document's text
    end: int
    score: float

    @classmethod
    def of(cls, row: Sequence[Any], score: float | None = None) -> Hit:
        """A hit from a row of :data:`COLUMNS`, its score the row's 11th column or ``score``."""
        return cls(
            chunk_id=row[0],
            knowledge_base_id=row[1],
            resource_id=row[2],
            document_name=row[3],
            chunk_index=row[4],
            text=row[5],
            page=row[6],
            heading=row[7],
            start=row[8],
            end=row[9],
            score=float((row[10] if score is None else score) or 0.0),
        )


class Retriever(Protocol):
    """One way of finding chunks; ``strategy`` is its name (``keyword``, ``semantic``)."""

    strategy: str

    async def search(self, kb_ids: Sequence[str], query: str, top_k: int) -> list[Hit]: ...


def terms(query: str) -> list[str]:
    """The words of a query, lower-cased, each once, at most :data:`MAX_TERMS`."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        seen.setdefault(word, None)
        if len(seen) == MAX_TERMS:
            break
    return list(seen)


def normalise(hits: list[Hit]) -> list[Hit]:
    """Scores divided by the best one (1.0 for the first)."""
    best = max((h.score for h in hits), default=0.0)
    if best <= 0:
        return [replace(h, score=0.0) for h in hits]
    return [replace(h, score=h.score / best) for h in hits]


def fuse(rankings: Sequence[list[Hit]], top_k: int, k: int = RRF_K) -> list[Hit]:
    """Reciprocal-rank fusion: each chunk scores the sum of 1 / (k + rank) over the rankings
    it is in; the fused scores normalised by the best."""
    scores: dict[int, float] = {}
    first: dict[int, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (k + rank)
            first.setdefault(hit.chunk_id, hit)
    ordered = sorted(scores, key=lambda chunk_id: (-scores[chunk_id], chunk_id))[:top_k]
    return normalise([replace(first[c], score=scores[c]) for c in ordered])


COLUMNS = (  # what a search statement selects for a Hit (then, optionally, the score)
    "c.id, c.kb_id, c.file_id, f.resource_path, c.chunk_index, c.text, c.page, c.heading, "
    "c.char_start, c.char_end"
)


class Index:
    """Search over KBs by strategy: the one interface routes, CLI and nodes call."""

    def __init__(self, retrievers: Sequence[Retriever]) -> None:
        self.retrievers = {r.strategy: r for r in retrievers}

    def register(self, retriever: Retriever) -> None:
        self.retrievers[retriever.strategy] = retriever

    @property
    def strategies(self) -> frozenset[str]:
        found = set(self.retrievers)
        if {"keyword", "semantic"} <= found:
            found.add("hybrid")
        return frozenset(found)

    async def search(
        self, kb_ids: Sequence[str], query: str, top_k: int, strategy: str = "keyword"
    ) -> list[Hit]:
        if strategy == "hybrid" and "hybrid" in self.strategies:
            deep = max(top_k * 2, 20)  # each side looks further than what is kept
            rankings = [
                await self.retrievers[s].search(kb_ids, query, deep)
                for s in ("keyword", "semantic")
            ]
            return fuse(rankings, top_k)
        retriever = self.retrievers.get(strategy)
        if retriever is None:
            raise InputError(
                f"query_strategy {strategy!r} is not available: these knowledge bases have no "
                "vectors (no embedding model); use 'keyword'",
                ("body", "query_strategy"),
            )
        return (await retriever.search(kb_ids, query, top_k))[:top_k]
