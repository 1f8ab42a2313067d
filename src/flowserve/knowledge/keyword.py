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
itself, over the whole table (all orgs, as BM25's own counts are), and kept per process for
as long as the index is unchanged: FTS5 rewrites its structure record (row 10 of its data
table, its first four bytes a change counter) on every write, so that record is the cache's
key, read before and after each search.

The KB filter is part of the match: each chunk's KB is one token of the index (migration
0007), and the words are confined to the text and the heading. Filtering by joining every
matching chunk's row instead cost more than the scoring (at 100k chunks p50 86 ms against
24). Only the best ``top_k`` are joined for their text and file, and checked once more
against the KBs asked for.

What is left is FTS5 itself: it scores every chunk holding any kept word (a query of nine
words, some in 40% of the chunks, matches 93k of 100k). FTS5 has no way to skip chunks that
cannot reach the top, so :mod:`flowserve.knowledge.maxscore` restricts the match to chunks
holding a rarer word where that is provably exact, and falls back to the one statement
where it is not (or where the index changed during the search).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from flowserve.knowledge import maxscore
from flowserve.knowledge.search import COLUMNS, Hit, normalise, terms
from flowserve.store.database import Database

DF_CACHE_WORDS = 50_000  # words counted per version of the index, at most
PRUNE_FROM = 1_000  # chunks: a smaller table is fast to score whole

_SQLITE = (
    f"SELECT {COLUMNS}, top.score FROM ("
    "SELECT rowid AS id, -bm25(kb_chunks_fts, 1.0, 0.5, 0.0) AS score FROM kb_chunks_fts "
    "WHERE kb_chunks_fts MATCH :match ORDER BY score DESC, rowid LIMIT :top_k"
    ") AS top CROSS JOIN kb_chunks c ON c.id = top.id CROSS JOIN kb_files f ON f.id = c.file_id "
    "WHERE c.kb_id IN :kb_ids ORDER BY top.score DESC, c.id"
)
_POSTGRES = (
    f"SELECT {COLUMNS}, ts_rank_cd(c.tsv, q.query, 1) AS score "
    "FROM kb_chunks c JOIN kb_files f ON f.id = c.file_id, ({query}) AS q "
    "WHERE c.tsv @@ q.query AND c.kb_id IN :kb_ids "
    "ORDER BY score DESC, c.id LIMIT :top_k"
)
_SQLITE_STATEMENT = text(_SQLITE).bindparams(bindparam("kb_ids", expanding=True))
_VERSION = text("SELECT block FROM kb_chunks_fts_data WHERE id = 10")  # FTS5's structure
_COUNT_ALL = text("SELECT count(*) FROM kb_chunks")
_COUNT_WORD = text("SELECT count(*) FROM kb_chunks_fts WHERE kb_chunks_fts MATCH :match")


def kb_token(kb_id: str) -> str:
    """A KB's token in the index: SQLite's ``hex(kb_id) || '0'`` (migration 0007)."""
    return kb_id.encode().hex().upper() + "0"


def informative(words: Sequence[str], df: dict[str, int], total: int, max_df: float) -> list[str]:
    """The words worth matching: those in fewer than ``max_df`` of ``total`` chunks, else the
    rarest one; all of them at ``max_df`` 1 or below :data:`PRUNE_FROM` chunks."""
    if max_df >= 1.0 or total < PRUNE_FROM:
        return list(words)
    kept = [w for w in words if df.get(w, 0) < max_df * total]
    return kept or [min(words, key=lambda w: df.get(w, 0))]  # min keeps the first of ties


@dataclass
class _Counts:
    """The chunks in all, and how many hold each word, at one version of the index."""

    version: bytes | None
    total: int
    words: dict[str, int] = field(default_factory=dict)


class _Counter:
    """:class:`_Counts` for the index's current version, counted again when it changes.
    A search that read one version counts into that version's object only, so counts made
    while a write lands are never used by a search that sees no change before and after."""

    def __init__(self) -> None:
        self.latest: _Counts | None = None

    async def of(self, conn: AsyncConnection, words: Sequence[str]) -> _Counts:
        version = await _version(conn)
        counts = self.latest
        if counts is None or version is None or counts.version != version:
            total = int((await conn.execute(_COUNT_ALL)).scalar_one())
            counts = _Counts(version, total)
            self.latest = counts
        for word in words:
            if word not in counts.words:
                match = {"match": _words([word])}
                counts.words[word] = int((await conn.execute(_COUNT_WORD, match)).scalar_one())
                if len(counts.words) > DF_CACHE_WORDS:
                    counts.words.pop(next(iter(counts.words)))
        return counts


async def _version(conn: AsyncConnection) -> bytes | None:
    """FTS5's structure record (None before the index's first write: never cached)."""
    return (await conn.execute(_VERSION)).scalar_one_or_none()


class KeywordRetriever:
    """Full-text search in the database (see the module doc)."""

    strategy = "keyword"

    def __init__(self, db: Database, max_df: float = 0.5, use_maxscore: bool = True) -> None:
        self.db = db
        self.use_maxscore = use_maxscore  # off: the one statement (the tests compare the two)
        self.dialect = db.engine.dialect.name
        self.max_df = max_df
        self.counts = _Counter()

    async def search(self, kb_ids: Sequence[str], query: str, top_k: int) -> list[Hit]:
        words = terms(query)
        if not words or not kb_ids:
            return []
        search = self._postgres if self.dialect == "postgresql" else self._sqlite
        async with self.db.engine.connect() as conn:
            rows = await search(conn, words, list(kb_ids), top_k)
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

    async def _sqlite(
        self, conn: AsyncConnection, words: list[str], kb_ids: list[str], top_k: int
    ) -> Sequence[Any]:
        counts = await self.counts.of(conn, words)
        total, df = counts.total, counts.words
        words = informative(words, df, total, self.max_df)
        words.sort(key=lambda w: (df.get(w, 0), w))  # rarest first, in every statement
        kbs = _kbs(kb_ids)

        async def ranked(match: str) -> Sequence[Any]:
            params = {"match": match, "kb_ids": kb_ids, "top_k": top_k}
            return (await conn.execute(_SQLITE_STATEMENT, params)).all()

        async def restricted(n: int) -> Sequence[Any] | None:
            """The chunks holding one of the ``n`` rarest words, scored on all of them;
            None when that is every word (the full statement is as cheap)."""
            if n >= len(words):
                return None
            return await ranked(f"{kbs} AND {_words(words[:n])} AND ({_words(words[n:])} OR {kbs})")

        if self.use_maxscore and total >= PRUNE_FROM:
            n = maxscore.split(words, df, total)
            best = await restricted(n)
            if best is not None and not maxscore.exact(
                best, top_k, maxscore.bound(words[n:], df, total)
            ):
                if len(best) < top_k:
                    best = None  # no score known to be reached: nothing to bound by
                else:
                    best = await restricted(maxscore.grow(words, df, total, n, best[-1][-1]))
            if best is not None and await _version(conn) == counts.version:
                return best
        return await ranked(f"{kbs} AND {_words(words)}")


def _words(words: Sequence[str]) -> str:
    """Any of ``words`` in the text or the heading (``\\w+``: no quote inside)."""
    return "{text heading} : (" + " OR ".join(f'"{w}"' for w in words) + ")"


def _kbs(kb_ids: Sequence[str]) -> str:
    """Chunks of any of ``kb_ids``, by their token."""
    return "{fts_kb} : (" + " OR ".join(f'"{kb_token(k)}"' for k in kb_ids) + ")"
