"""Keyword search on SQLite: FTS5 ranked by its ``bm25()`` (flowserve.knowledge.keyword).

**Speed.** FTS5 scores every chunk that holds any query word, so a word found in most chunks
("the", "file" in man pages) makes a query score most of the table. Such a word weighs
nothing in BM25: FTS5 clamps the inverse document frequency to 1e-6 once a word is in half
the chunks or more. So words in at least ``max_df`` (``kb_keyword_max_df``, default 0.5) of
all chunks are left out of the match before it runs; at 0.5 the ranking is unchanged, and
only chunks whose sole match was such a word (scored ~0) drop out. Tables under
:data:`PRUNE_FROM` chunks are searched with every word. A lower share is faster and drops
words that do weigh a little (bench/retrieval.py measures both). When every word is that
common the rarest one is kept.

How many chunks hold a word is counted by the index itself, over the whole table (all orgs,
as BM25's own counts are), and kept per process for as long as the index is unchanged:
FTS5 rewrites its structure record (row 10 of its data table: its segments and a count of
writes) on every write, so that record is the cache's key, read before and after a search.

The KB filter is part of the match: each chunk's KB is one token of the index (migration
0007), and the words are confined to the text and the heading. Filtering by joining every
matching chunk's row instead cost more than the scoring (at 100k chunks p50 86 ms against
24). Only the best ``top_k`` are joined for their text and file, and checked once more
against the KBs asked for.

What is left is FTS5 itself, which scores every chunk its match finds. It cannot skip
chunks that cannot reach the top, so :mod:`flowserve.knowledge.maxscore` restricts the
match to chunks holding a rarer word where that is provably exact, and falls back to the
one statement where it is not (or where the index changed during the search). And a large
KB's chunks are searched in ``parallel`` ranges of chunk ids at once, each range on its own
connection (SQLite runs them on as many cores; the merged best ``top_k`` are the whole
range's, scores and all, as each chunk's score depends on the whole table only).
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from flowserve.knowledge import maxscore
from flowserve.knowledge.search import COLUMNS
from flowserve.store.database import Database

DF_CACHE_WORDS = 50_000  # words counted per version of the index, at most
PRUNE_FROM = 1_000  # chunks: a smaller table is fast to score whole
PARALLEL_FROM = 20_000  # chunks in the KBs searched: fewer are not worth a second connection
_ALL = (-(2**63), 2**63 - 1)  # every chunk id

_SQLITE = (
    f"SELECT {COLUMNS}, top.score FROM ("
    "SELECT rowid AS id, -bm25(kb_chunks_fts, 1.0, 0.5, 0.0) AS score FROM kb_chunks_fts "
    "WHERE kb_chunks_fts MATCH :match AND rowid BETWEEN :low AND :high "
    "ORDER BY score DESC, rowid LIMIT :top_k"
    ") AS top CROSS JOIN kb_chunks c ON c.id = top.id CROSS JOIN kb_files f ON f.id = c.file_id "
    "WHERE c.kb_id IN :kb_ids ORDER BY top.score DESC, c.id"
)
STATEMENT = text(_SQLITE).bindparams(bindparam("kb_ids", expanding=True))
_VERSION = text("SELECT block FROM kb_chunks_fts_data WHERE id = 10")  # FTS5's structure
_COUNT_ALL = text("SELECT count(*) FROM kb_chunks")
COUNT_MATCH = text("SELECT count(*) FROM kb_chunks_fts WHERE kb_chunks_fts MATCH :match")
_SPAN = text("SELECT count(*), min(id), max(id) FROM kb_chunks WHERE kb_id IN :kb_ids").bindparams(
    bindparam("kb_ids", expanding=True)
)


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


def ranges(count: int, low: int | None, high: int | None, parallel: int) -> list[tuple[int, int]]:
    """The chunk-id ranges to search at once: ``[low, high]`` cut in ``parallel`` equal
    parts when the KBs hold :data:`PARALLEL_FROM` chunks or more, else everything."""
    if parallel < 2 or count < PARALLEL_FROM or low is None or high is None:
        return [_ALL]
    step = (high - low + parallel) // parallel
    return [(low + i * step, min(high, low + (i + 1) * step - 1)) for i in range(parallel)]


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
        version = await index_version(conn)
        counts = self.latest
        if counts is None or version is None or counts.version != version:
            total = int((await conn.execute(_COUNT_ALL)).scalar_one())
            counts = _Counts(version, total)
            self.latest = counts
        for word in words:
            if word not in counts.words:
                match = {"match": any_word([word])}
                counts.words[word] = int((await conn.execute(COUNT_MATCH, match)).scalar_one())
                if len(counts.words) > DF_CACHE_WORDS:
                    counts.words.pop(next(iter(counts.words)))
        return counts


async def index_version(conn: AsyncConnection) -> bytes | None:
    """FTS5's structure record (None before the index's first write: never cached)."""
    return (await conn.execute(_VERSION)).scalar_one_or_none()


class Fts5Search:
    """The best ``top_k`` chunks of some KBs for some words (see the module doc)."""

    def __init__(self, db: Database, max_df: float, use_maxscore: bool, parallel: int) -> None:
        self.db = db
        self.max_df = max_df
        self.use_maxscore = use_maxscore
        self.parallel = parallel
        self.counts = _Counter()

    async def search(self, words: list[str], kb_ids: list[str], top_k: int) -> list[Any]:
        async with self.db.engine.connect() as conn:
            counts = await self.counts.of(conn, words)
            words = informative(words, counts.words, counts.total, self.max_df)
            words.sort(key=lambda w: (counts.words.get(w, 0), w))  # rarest first, always
            count, low, high = (await conn.execute(_SPAN, {"kb_ids": kb_ids})).one()
            parts = ranges(count, low, high, self.parallel)
            if len(parts) == 1:
                return list(await self._range(conn, counts, words, kb_ids, top_k, parts[0]))

        async def part(span: tuple[int, int]) -> Sequence[Any]:
            async with self.db.engine.connect() as conn:
                return await self._range(conn, counts, words, kb_ids, top_k, span)

        found = await asyncio.gather(*(part(span) for span in parts))
        return heapq.nsmallest(top_k, (r for rows in found for r in rows), key=_order)

    async def _range(
        self,
        conn: AsyncConnection,
        counts: _Counts,
        words: list[str],
        kb_ids: list[str],
        top_k: int,
        span: tuple[int, int],
    ) -> Sequence[Any]:
        kbs = _kbs(kb_ids)
        params = {"kb_ids": kb_ids, "top_k": top_k, "low": span[0], "high": span[1]}
        total, df = counts.total, counts.words

        async def ranked(match: str) -> Sequence[Any]:
            return (await conn.execute(STATEMENT, {**params, "match": match})).all()

        async def restricted(n: int) -> Sequence[Any] | None:
            """The chunks holding one of the ``n`` rarest words, scored on all of them;
            None when that is every word (the full statement is as cheap)."""
            if n >= len(words):
                return None
            rest = any_word(words[n:])
            return await ranked(f"{kbs} AND {any_word(words[:n])} AND ({rest} OR {kbs})")

        if self.use_maxscore and total >= PRUNE_FROM:
            n = maxscore.split(words, df, total)
            best = await restricted(n)
            limit = maxscore.bound(words[n:], df, total)
            if best is not None and not maxscore.exact(best, top_k, limit):
                if len(best) < top_k:
                    best = None  # no score known to be reached: nothing to bound by
                else:
                    best = await restricted(maxscore.grow(words, df, total, n, best[-1][-1]))
            if best is not None and await index_version(conn) == counts.version:
                return best
        return await ranked(f"{kbs} AND {any_word(words)}")


def _order(row: Any) -> tuple[float, int]:
    return (-row[-1], row[0])  # the statement's order: score, best first, then chunk id


def any_word(words: Sequence[str]) -> str:
    """Any of ``words`` in the text or the heading (``\\w+``: no quote inside)."""
    return "{text heading} : (" + " OR ".join(f'"{w}"' for w in words) + ")"


def _kbs(kb_ids: Sequence[str]) -> str:
    """Chunks of any of ``kb_ids``, by their token."""
    return "{fts_kb} : (" + " OR ".join(f'"{kb_token(k)}"' for k in kb_ids) + ")"
