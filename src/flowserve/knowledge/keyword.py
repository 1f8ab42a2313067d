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

**Speed on SQLite.** FTS5 scores every chunk that holds any query word, so a word found in
most chunks ("the", "file" in man pages) makes a query score most of the table. Such a word
weighs nothing in BM25: FTS5 clamps the inverse document frequency to 1e-6 once a word is in
half the chunks or more. So words in at least ``max_df`` (``kb_keyword_max_df``, default 0.5)
of all chunks are left out of the match before it runs; at 0.5 the ranking is unchanged, and
only chunks whose sole match was such a word (scored ~0) drop out. Tables under
:data:`PRUNE_FROM` chunks are searched with every word. A lower share is faster
and drops words that do weigh a little (bench/retrieval.py measures both). When every word is
that common the rarest one is kept. How many chunks hold a word is counted by the index
itself and kept per process for :data:`DF_TTL` seconds, or until the table's size has
changed by :data:`DF_DRIFT`. The counts are over the whole table
(all orgs), as BM25's own are.

The statement names the full-text table first with ``CROSS JOIN``, which SQLite takes as the
join order: left to choose, SQLite 3.51 starts from the KB's chunks and probes the index once
per chunk (22 s instead of 0.1 s at 100k chunks, measured). The best ``top_k`` are chosen on
(chunk id, score) alone and only they are joined for their text and file: sorting every
matching chunk's text made the query ~15% slower at 100k chunks.

What is left is FTS5 itself: it scores every chunk holding any kept word (a query of nine
words, some in 40% of the chunks, matches 93k of 100k and takes ~90 ms on this machine; the
same count without scores 8 ms). FTS5 has no way to skip chunks that cannot reach the top,
so :mod:`flowserve.knowledge.maxscore` does it with two smaller statements where that is
provably exact, and falls back to the one statement where it is not.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from flowserve.knowledge import maxscore
from flowserve.knowledge.search import COLUMNS, Hit, normalise, terms
from flowserve.store.database import Database

DF_TTL = 60.0  # seconds a word's chunk count is reused
TOTAL_TTL = 2.0  # and the count of all chunks (cheap: SQLite counts from its smallest index)
DF_DRIFT = 0.1  # a word is counted again once the table has changed size by this share
DF_CACHE_WORDS = 50_000
PRUNE_FROM = 1_000  # chunks: a smaller table is fast to score whole

_SQLITE = (
    f"SELECT {COLUMNS}, top.score FROM ("
    "SELECT kb_chunks_fts.rowid AS id, -bm25(kb_chunks_fts, 1.0, 0.5) AS score "
    "FROM kb_chunks_fts CROSS JOIN kb_chunks k ON k.id = kb_chunks_fts.rowid "
    "WHERE kb_chunks_fts MATCH :match AND k.kb_id IN :kb_ids "
    "ORDER BY score DESC, k.id LIMIT :top_k"
    ") AS top CROSS JOIN kb_chunks c ON c.id = top.id CROSS JOIN kb_files f ON f.id = c.file_id "
    "ORDER BY top.score DESC, c.id"
)
_POSTGRES = (
    f"SELECT {COLUMNS}, ts_rank_cd(c.tsv, q.query, 1) AS score "
    "FROM kb_chunks c JOIN kb_files f ON f.id = c.file_id, ({query}) AS q "
    "WHERE c.tsv @@ q.query AND c.kb_id IN :kb_ids "
    "ORDER BY score DESC, c.id LIMIT :top_k"
)
_SQLITE_STATEMENT = text(_SQLITE).bindparams(bindparam("kb_ids", expanding=True))
_COUNT_ALL = text("SELECT count(*) FROM kb_chunks")
_COUNT_WORD = text("SELECT count(*) FROM kb_chunks_fts WHERE kb_chunks_fts MATCH :match")


def informative(words: Sequence[str], df: dict[str, int], total: int, max_df: float) -> list[str]:
    """The words worth matching: those in fewer than ``max_df`` of ``total`` chunks, else the
    rarest one; all of them at ``max_df`` 1 or below :data:`PRUNE_FROM` chunks."""
    if max_df >= 1.0 or total < PRUNE_FROM:
        return list(words)
    kept = [w for w in words if df.get(w, 0) < max_df * total]
    return kept or [min(words, key=lambda w: df.get(w, 0))]  # min keeps the first of ties


class _Counts:
    """How many chunks hold each word, and how many chunks there are (counted again after
    :data:`TOTAL_TTL`). A word's count is reused for :data:`DF_TTL`, and only while the
    table is within :data:`DF_DRIFT` of its size when the word was counted: a count from a
    table since grown tenfold would keep every word (slow), one since shrunk would drop
    words that now weigh."""

    def __init__(self) -> None:
        # word -> (when counted, chunks holding it, chunks in all then)
        self.words: OrderedDict[str, tuple[float, int, int]] = OrderedDict()
        self.total: tuple[float, int] | None = None

    @staticmethod
    def _fresh(cached: tuple[float, int, int], now: float, total: int) -> bool:
        when, _, then = cached
        return now - when <= DF_TTL and abs(total - then) <= DF_DRIFT * max(then, 1)

    async def of(self, conn: AsyncConnection, words: Sequence[str]) -> tuple[int, dict[str, int]]:
        now = time.monotonic()
        if self.total is None or now - self.total[0] > TOTAL_TTL:
            self.total = (now, int((await conn.execute(_COUNT_ALL)).scalar_one()))
        total = self.total[1]
        df: dict[str, int] = {}
        for word in words:
            cached = self.words.get(word)
            if cached is None or not self._fresh(cached, now, total):
                match = {"match": _any([word])}
                count = int((await conn.execute(_COUNT_WORD, match)).scalar_one())
                cached = (now, count, total)
                self.words[word] = cached
                if len(self.words) > DF_CACHE_WORDS:
                    self.words.popitem(last=False)
            self.words.move_to_end(word)
            df[word] = cached[1]
        return total, df


class KeywordRetriever:
    """Full-text search in the database (see the module doc)."""

    strategy = "keyword"

    def __init__(self, db: Database, max_df: float = 0.5, use_maxscore: bool = True) -> None:
        self.db = db
        self.use_maxscore = use_maxscore  # off: the one statement (the tests compare the two)
        self.dialect = db.engine.dialect.name
        self.max_df = max_df
        self.counts = _Counts()

    async def search(self, kb_ids: Sequence[str], query: str, top_k: int) -> list[Hit]:
        words = terms(query)
        if not words or not kb_ids:
            return []
        params: dict[str, object] = {"kb_ids": list(kb_ids), "top_k": top_k}
        search = self._postgres if self.dialect == "postgresql" else self._sqlite
        async with self.db.engine.connect() as conn:
            rows = await search(conn, words, params, top_k)
        return normalise([Hit.of(row) for row in rows])

    async def _postgres(
        self, conn: AsyncConnection, words: list[str], params: dict[str, object], _top_k: int
    ) -> Sequence[Any]:  # top_k is in params, as the statement's LIMIT
        names = [f"w{i}" for i in range(len(words))]
        tsquery = " || ".join(f"plainto_tsquery('english', :{n})" for n in names)
        sql = _POSTGRES.format(query=f"SELECT {tsquery} AS query")
        statement = text(sql).bindparams(bindparam("kb_ids", expanding=True))
        return (
            await conn.execute(statement, {**params, **dict(zip(names, words, strict=True))})
        ).all()

    async def _sqlite(
        self, conn: AsyncConnection, words: list[str], params: dict[str, object], top_k: int
    ) -> Sequence[Any]:
        total, df = await self.counts.of(conn, words)
        words = informative(words, df, total, self.max_df)
        if not words:
            return []
        words.sort(key=lambda w: (df.get(w, 0), w))  # rarest first, in every statement

        async def ranked(match: str) -> Sequence[Any]:
            return (await conn.execute(_SQLITE_STATEMENT, {**params, "match": match})).all()

        if self.use_maxscore and total >= PRUNE_FROM:
            for cut in maxscore.CUTS:
                essential, rest = maxscore.split(words, df, total, cut)
                if not rest:
                    break  # nothing common left out: the one statement is as cheap
                only = await ranked(_any(essential))
                both = await ranked(f"({_any(essential)}) AND ({_any(rest)})")
                best = maxscore.merged(only, both, top_k)
                if maxscore.exact(best, top_k, maxscore.bound(rest, df, total)):
                    return best
        return await ranked(_any(words))


def _any(words: Sequence[str]) -> str:
    return " OR ".join(f'"{w}"' for w in words)  # \w+: no quote inside
