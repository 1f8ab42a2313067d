"""Keyword search: the database's full-text index (migration 0004), no model involved.

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

How SQLite's search is made fast (pruned words, the KB filter inside the index, MaxScore,
ranges searched in parallel) is :mod:`flowserve.knowledge.fts5`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from flowserve.knowledge.fts5 import Fts5Search
from flowserve.knowledge.search import COLUMNS, Hit, normalise, terms
from flowserve.store.database import Database

_POSTGRES = (
    f"SELECT {COLUMNS}, ts_rank_cd(c.tsv, q.query, 1) AS score "
    "FROM kb_chunks c JOIN kb_files f ON f.id = c.file_id, ({query}) AS q "
    "WHERE c.tsv @@ q.query AND c.kb_id IN :kb_ids "
    "ORDER BY score DESC, c.id LIMIT :top_k"
)


class KeywordRetriever:
    """Full-text search in the database (see the module doc)."""

    strategy = "keyword"

    def __init__(
        self, db: Database, max_df: float = 0.5, use_maxscore: bool = True, parallel: int = 2
    ) -> None:
        self.db = db
        self.dialect = db.engine.dialect.name
        # use_maxscore off: the one statement (the tests compare the two)
        self.fts5 = Fts5Search(db, max_df, use_maxscore, parallel)

    async def search(self, kb_ids: Sequence[str], query: str, top_k: int) -> list[Hit]:
        words = terms(query)
        if not words or not kb_ids:
            return []
        if self.dialect == "postgresql":
            async with self.db.engine.connect() as conn:
                rows = await self._postgres(conn, words, list(kb_ids), top_k)
        else:
            rows = await self.fts5.search(words, list(kb_ids), top_k)
        return normalise([Hit.of(row) for row in rows])

    async def _postgres(
        self, conn: AsyncConnection, words: list[str], kb_ids: list[str], top_k: int
    ) -> Sequence[Any]:
        names = [f"w{i}" for i in range(len(words))]
        tsquery = " || ".join(f"plainto_tsquery('english', :{n})" for n in names)
        sql = _POSTGRES.format(query=f"SELECT {tsquery} AS query")
        statement = text(sql).bindparams(bindparam("kb_ids", expanding=True))
        params = {"kb_ids": kb_ids, "top_k": top_k, **dict(zip(names, words, strict=True))}
        return (await conn.execute(statement, params)).all()
