"""Keyword search on SQLite: FTS5, ranked by BM25 (flowserve.knowledge.keyword).

**Speed.** FTS5 matches every chunk that holds any query word, so a word found in most chunks
("the", "file" in man pages) makes a query visit most of the table. Such a word weighs
nothing in BM25: FTS5 clamps the inverse document frequency to 1e-6 once a word is in half
the chunks or more. So words in at least ``max_df`` (``kb_keyword_max_df``, default 0.5) of
all chunks are left out of the match before it runs; at 0.5 the ranking is unchanged, and
only chunks whose sole match was such a word (scored ~0) drop out. Tables under
:data:`PRUNE_FROM` chunks are searched with every word. A lower share is faster and drops
words that do weigh a little (bench/retrieval.py measures both). When every word is that
common the rarest one is kept.

How many chunks hold a word is counted by the index itself, over the whole table (all orgs,
as BM25's own counts are), and kept per process for as long as the index is unchanged: the
triggers that keep the index raise ``kb_fts_version`` with every chunk written or deleted
(migration 0007), and that number is the cache's key, read before and after a search.

**Ranking.** Where the install built it, ``flowrank`` (flowserve/store/flowrank.c) ranks:
``bm25()``'s scores to the last bit, from the counts above instead of a scan of every
phrase's whole list of chunks in each statement, and without the length lookup (a statement
of its own inside FTS5, most of ``bm25()``'s time) of any chunk that provably cannot reach
the ``top_k``. At 100k chunks the one statement went from p50 56 / p99 175 ms to 14 / 34
(raw SQL, once, on a 2-core EPYC; bench/retrieval.py measures the search as it runs).
Where it is not loaded, and whenever the index changed during a search (its counts might
be stale), ``bm25()`` ranks.

**The KB filter** is part of the match: each chunk's KB is one token of the index (migration
0007), and the words are confined to the text and the heading. Filtering by joining every
matching chunk's row instead cost more than the scoring (at 100k chunks p50 86 ms against
24). The token's list is as long as the KB, scanned by every statement, so where the KBs
asked for are alone in their span of chunk ids (no other KB's chunk between their first and
last: :class:`Span`, found once per version), the span is the filter and flowrank does
without the token (p50 13 → 8 ms at 100k chunks, raw SQL, once). Only the best ``top_k``
are joined for their text and file, and checked once more against the KBs asked for: a
filter that let another KB's chunk through would lose a hit, never show it.

What is left is FTS5's matching, which visits every chunk its match finds, so
:mod:`flowserve.knowledge.maxscore` restricts the match to chunks holding a rarer word where
that is provably exact. And each statement (the rounds of MaxScore, the full one) runs in
``parallel`` ranges of chunk ids at once when the KBs span :data:`PARALLEL_FROM` ids, each
range on its own connection: SQLite runs them on as many cores, and as BM25's statistics are
the whole table's, the merged best ``top_k`` are the one statement's, scores and all;
MaxScore decides on the merged rows. If the index changed during a search, the full
statement answers.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from flowserve.knowledge import maxscore
from flowserve.knowledge.search import COLUMNS
from flowserve.store.database import Database

DF_CACHE_WORDS = 50_000  # words counted per version of the index, at most
PRUNE_FROM = 1_000  # chunks: a smaller table is fast to score whole
SPANS_CACHED = 1_000  # KB sets whose span is kept per version of the index
PARALLEL_FROM = 20_000  # chunk ids the KBs span: fewer are not worth a second connection
_ALL = (-(2**63), 2**63 - 1)  # every chunk id

WEIGHTS = "1.0, 0.5, 0.0"  # the text, the heading, the KB token (weighs nothing)
_SQLITE = (
    f"SELECT {COLUMNS}, top.score FROM ("
    "SELECT rowid AS id, {score} AS score FROM kb_chunks_fts "
    "WHERE kb_chunks_fts MATCH :match AND rowid BETWEEN :low AND :high "
    "ORDER BY score DESC, rowid LIMIT :top_k"
    ") AS top CROSS JOIN kb_chunks c ON c.id = top.id CROSS JOIN kb_files f ON f.id = c.file_id "
    "WHERE c.kb_id IN :kb_ids ORDER BY top.score DESC, c.id"
)


def _statement(score: str) -> Any:
    return text(_SQLITE.replace("{score}", score)).bindparams(bindparam("kb_ids", expanding=True))


STATEMENT = _statement(f"-bm25(kb_chunks_fts, {WEIGHTS})")


@lru_cache(maxsize=256)
def ranked_by_flowrank(phrases: int) -> Any:
    """The statement ranked by flowrank (flowserve/store/flowrank.c) for a match of
    ``phrases`` phrases, their document counts bound as ``:d0`` and on."""
    counts = ", ".join(f":d{i}" for i in range(phrases))
    return _statement(f"flowrank(kb_chunks_fts, :top_k, {WEIGHTS}, {counts})")


_VERSION = text("SELECT n FROM kb_fts_version WHERE id = 1")
_COUNT_ALL = text("SELECT count(*) FROM kb_chunks")
COUNT_MATCH = text("SELECT count(*) FROM kb_chunks_fts WHERE kb_chunks_fts MATCH :match")
# the KBs' first and last chunk ids: two index seeks (with a count(*) SQLite would scan the
# KBs' index entries instead, 5 ms at 100k chunks)
_SPAN = text(
    "SELECT (SELECT min(id) FROM kb_chunks WHERE kb_id IN :kb_ids), "
    "(SELECT max(id) FROM kb_chunks WHERE kb_id IN :kb_ids)"
).bindparams(bindparam("kb_ids", expanding=True))
# whether a chunk of another KB lies between the KBs' first and last: one index seek per
# other KB (a chunk's KB is its file's, and a KB's files go with it)
_SHARED = text(
    "SELECT EXISTS (SELECT 1 FROM knowledge_bases k WHERE k.id NOT IN :kb_ids AND EXISTS "
    "(SELECT 1 FROM kb_chunks c WHERE c.kb_id = k.id AND c.id BETWEEN :low AND :high))"
).bindparams(bindparam("kb_ids", expanding=True))


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


def ranges(
    low: int | None, high: int | None, parallel: int, bounded: bool = False
) -> list[tuple[int, int]]:
    """The chunk-id ranges to search at once: the KBs' ``[low, high]`` cut in ``parallel``
    equal parts when it spans :data:`PARALLEL_FROM` ids or more, else everything (or, when
    ``bounded``, that one range)."""
    if parallel < 2 or low is None or high is None or high - low + 1 < PARALLEL_FROM:
        return [(low, high)] if bounded and low is not None and high is not None else [_ALL]
    step = (high - low + parallel) // parallel
    return [(low + i * step, min(high, low + (i + 1) * step - 1)) for i in range(parallel)]


@dataclass
class _Counts:
    """The chunks in all, and how many hold each word, at one version of the index."""

    version: int | None
    total: int
    words: dict[str, int] = field(default_factory=dict)
    spans: dict[tuple[str, ...], Span] = field(default_factory=dict)

    async def span(self, conn: AsyncConnection, kb_ids: Sequence[str]) -> Span:
        """The KBs' :class:`Span`, found once per version of the index."""
        key = tuple(sorted(set(kb_ids)))
        if key not in self.spans:
            low, high = (await conn.execute(_SPAN, {"kb_ids": list(key)})).one()
            alone = False
            if low is not None:
                params = {"kb_ids": list(key), "low": low, "high": high}
                alone = not (await conn.execute(_SHARED, params)).scalar_one()
            if len(self.spans) >= SPANS_CACHED:
                self.spans.pop(next(iter(self.spans)))
            self.spans[key] = Span(low, high, alone)
        return self.spans[key]


@dataclass(frozen=True)
class Span:
    """The first and last chunk ids of some KBs (None: they have none), and whether they
    are alone in that range: then the range is their filter, and their token is not
    needed in the match (it is a phrase as long as the KBs, scanned by every statement)."""

    low: int | None
    high: int | None
    alone: bool


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


async def index_version(conn: AsyncConnection) -> int | None:
    """How many times chunks were written or deleted (None: no such row, never cached)."""
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
            total, df = counts.total, counts.words
            words = informative(words, df, total, self.max_df)
            words.sort(key=lambda w: (df.get(w, 0), w))  # rarest first, in every statement
            span = await counts.span(conn, kb_ids)
            if span.low is None:
                return []  # the KBs hold no chunk
            rank = self.db.rank_function
            alone = rank and span.alone  # (bm25() would count the phrases left out)
            query = _Query(conn, words, kb_ids, top_k, df, rank, alone)
            spans = ranges(span.low, span.high, self.parallel, bounded=alone)
            if self.use_maxscore and total >= PRUNE_FROM:
                best = await self._maxscore(query, df, total, spans)
                if best is not None and await index_version(conn) == counts.version:
                    return best  # (had the index changed, the counts might not hold)
            best = await self._ranges(query, query.match(len(words)), spans)
            if not rank or await index_version(conn) == counts.version:
                return best
            # flowrank ranked with counts of an older index: bm25() counts its own
            query = replace(query, flowrank=False, alone=False)
            return await self._ranges(query, query.match(len(words)), [_ALL])

    async def _maxscore(
        self, query: _Query, df: dict[str, int], total: int, spans: list[tuple[int, int]]
    ) -> list[Any] | None:
        """MaxScore's answer (flowserve.knowledge.maxscore), or None where it proves none."""
        words, top_k = query.words, query.top_k
        n = maxscore.split(words, df, total)
        if n >= len(words):
            return None  # every word is rare: the full statement is as cheap
        best = await self._ranges(query, query.match(n), spans)
        if maxscore.exact(best, top_k, maxscore.bound(words[n:], df, total)):
            return best
        if len(best) < top_k:
            return None  # no score known to be reached: nothing to bound by
        n = maxscore.grow(words, df, total, n, best[-1][-1])  # the second round
        return await self._ranges(query, query.match(n), spans) if n < len(words) else None

    async def _ranges(
        self, query: _Query, match: tuple[str, list[int]], spans: list[tuple[int, int]]
    ) -> list[Any]:
        """The best ``top_k`` of ``match`` over every span, the first on the query's own
        connection and each other on one of its own."""
        first, *others = spans

        async def other(span: tuple[int, int]) -> Sequence[Any]:
            async with self.db.engine.connect() as conn:
                return await replace(query, conn=conn).ranked(match, span)

        found = await asyncio.gather(query.ranked(match, first), *map(other, others))
        return heapq.nsmallest(query.top_k, (r for rows in found for r in rows), key=_order)


@dataclass(frozen=True)
class _Query:
    """One search's statements: its words (rarest first), KBs, ``top_k``, how many chunks
    hold each word, and whether flowrank ranks (else ``bm25()``)."""

    conn: AsyncConnection
    words: list[str]
    kb_ids: list[str]
    top_k: int
    df: dict[str, int]
    flowrank: bool
    alone: bool = False  # the KBs are filtered by their span alone (see Span)

    def match(self, n: int) -> tuple[str, list[int]]:
        """The chunks holding one of the ``n`` rarest words, scored on every word (the
        last group always matches: see flowserve.knowledge.maxscore); all words at ``n``
        = their number. With it, each of its phrases' document count, in their order (the
        KB tokens' are -1, for none: they weigh nothing)."""
        kbs, none = _kbs(self.kb_ids), [-1] * len(self.kb_ids)
        counts = [self.df.get(w, 0) for w in self.words]
        if n >= len(self.words):
            if self.alone:
                return any_word(self.words), counts
            return f"{kbs} AND {any_word(self.words)}", none + counts
        essential, rest = any_word(self.words[:n]), any_word(self.words[n:])
        if self.alone:  # the essential words again, to always match, counted once
            return f"{essential} AND ({rest} OR {essential})", counts + [-1] * n
        return f"{kbs} AND {essential} AND ({rest} OR {kbs})", none + counts + none

    async def ranked(self, match: tuple[str, list[int]], span: tuple[int, int]) -> Sequence[Any]:
        expression, counts = match
        params: dict[str, Any] = {"match": expression, "kb_ids": self.kb_ids, "top_k": self.top_k}
        params.update(low=span[0], high=span[1])
        if not self.flowrank:
            return (await self.conn.execute(STATEMENT, params)).all()
        params.update((f"d{i}", c) for i, c in enumerate(counts))
        return (await self.conn.execute(ranked_by_flowrank(len(counts)), params)).all()


def _order(row: Any) -> tuple[float, int]:
    return (-row[-1], row[0])  # the statement's order: score, best first, then chunk id


def any_word(words: Sequence[str]) -> str:
    """Any of ``words`` in the text or the heading (``\\w+``: no quote inside)."""
    return "{text heading} : (" + " OR ".join(f'"{w}"' for w in words) + ")"


def _kbs(kb_ids: Sequence[str]) -> str:
    """Chunks of any of ``kb_ids``, by their token."""
    return "{fts_kb} : (" + " OR ".join(f'"{kb_token(k)}"' for k in kb_ids) + ")"
