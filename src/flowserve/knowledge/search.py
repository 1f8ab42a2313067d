"""Retrieval behind one interface: :class:`Index`. ``search(kb_ids, query, top_k, strategy)``
gives :class:`Hit` objects, best first, scores in [0, 1] comparable within one search.

Each way of finding chunks is a :class:`Retriever` registered by its strategy: ``keyword``
is built in (below); ``semantic`` (vectors) plugs in beside it, and ``hybrid`` fuses the two
rankings by reciprocal rank (:func:`fuse`, k = 60). Scores are normalised per contract 3.7:
keyword and hybrid scores are divided by the best one; semantic ones are cosine similarities
clipped at 0, left as the retriever gives them.

**Keyword search** is the database's full-text index (migration 0004), no model involved:

- SQLite: FTS5, ranked by its ``bm25()`` (Okapi BM25: term frequency with saturation, inverse
  document frequency over all chunks, length normalisation; k1 = 1.2, b = 0.75), the text
  column weighing 1 and the heading 0.5; Porter-stemmed Unicode words.
- PostgreSQL: ``tsvector`` with the ``english`` configuration (stemming, stop words), ranked
  by ``ts_rank_cd`` (cover density: how many query words a chunk has and how close together,
  the text weighing more than the heading) with normalisation 1 (divided by 1 + the log of
  the chunk's length). Unlike BM25 it has **no inverse document frequency**: a rare word
  counts no more than a common one, so rankings differ from SQLite's on the same data.

User text is never query syntax: it is cut into words (``\\w+``, at most 32), each word is
given as a quoted FTS5 string or its own ``plainto_tsquery`` parameter, and the words are
OR-ed. A query of ``"``, ``NEAR(`` or ``*`` has no words and finds nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from sqlalchemy import bindparam, text

from flowserve.errors import InputError
from flowserve.store.database import Database

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


_COLUMNS = (
    "c.id, c.kb_id, c.file_id, f.resource_path, c.chunk_index, c.text, c.page, c.heading, "
    "c.char_start, c.char_end"
)
_SQLITE = (
    f"SELECT {_COLUMNS}, -bm25(kb_chunks_fts, 1.0, 0.5) AS score "
    "FROM kb_chunks_fts JOIN kb_chunks c ON c.id = kb_chunks_fts.rowid "
    "JOIN kb_files f ON f.id = c.file_id "
    "WHERE kb_chunks_fts MATCH :match AND c.kb_id IN :kb_ids "
    "ORDER BY score DESC, c.id LIMIT :top_k"
)
_POSTGRES = (
    f"SELECT {_COLUMNS}, ts_rank_cd(c.tsv, q.query, 1) AS score "
    "FROM kb_chunks c JOIN kb_files f ON f.id = c.file_id, ({query}) AS q "
    "WHERE c.tsv @@ q.query AND c.kb_id IN :kb_ids "
    "ORDER BY score DESC, c.id LIMIT :top_k"
)


class KeywordRetriever:
    """Full-text search in the database (see the module doc)."""

    strategy = "keyword"

    def __init__(self, db: Database) -> None:
        self.db = db
        self.dialect = db.engine.dialect.name

    async def search(self, kb_ids: Sequence[str], query: str, top_k: int) -> list[Hit]:
        words = terms(query)
        if not words or not kb_ids:
            return []
        params: dict[str, object] = {"kb_ids": list(kb_ids), "top_k": top_k}
        if self.dialect == "postgresql":
            names = [f"w{i}" for i in range(len(words))]
            tsquery = " || ".join(f"plainto_tsquery('english', :{n})" for n in names)
            sql = _POSTGRES.format(query=f"SELECT {tsquery} AS query")
            params.update(zip(names, words, strict=True))
        else:
            sql = _SQLITE
            params["match"] = " OR ".join(f'"{w}"' for w in words)  # \w+: no quote inside
        statement = text(sql).bindparams(bindparam("kb_ids", expanding=True))
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(statement, params)).all()
        hits = [
            Hit(
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
                score=float(row[10] or 0.0),
            )
            for row in rows
        ]
        return normalise(hits)


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
