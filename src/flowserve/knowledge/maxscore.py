"""Exact top-k BM25 without scoring every matching chunk: MaxScore, on top of FTS5.

FTS5 scores every chunk that holds any query word. BM25 is a sum over the query's words, each
word's share at most ``idf * (k1 + 1)`` (term-frequency saturation; FTS5's k1 = 1.2, the
text column's weight 1 the largest). So the words are split, rarest first, into *essential*
ones (found in fewer than ``cut`` of all chunks) and the *rest* (common words, low idf),
and two smaller statements replace the one:

- ``essential OR …``: every chunk holding an essential word, scored on those words;
- ``(essential OR …) AND (rest OR …)``: the chunks holding both kinds, scored on all words.

A chunk's full score is the second one's where it has one, else the first's (it holds none
of the rest). Both keep their best ``top_k``; merged, they are the exact best ``top_k`` of
every chunk holding an essential word. A chunk holding only common words scores at most
:func:`bound` of them; if the ``top_k``-th best beats that, the answer is exact. Otherwise
the next ``cut`` of :data:`CUTS` is tried, and in the end the one full statement (a query
of only fairly common words: nothing rare enough to bound the rest by).

Each phrase's share is FTS5's own (its idf over the whole table, the chunk's length), so the
scores are the full statement's to the last bit when the phrases come in the same order: the
callers always list words rarest first. The idf of :func:`bound` is computed from this
process's word counts (flowserve.knowledge.keyword: current within a few seconds, a word's
count within a 10% change of the table's size), with a margin of :data:`MARGIN` for the
counts' drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

K1 = 1.2  # FTS5's bm25()
# shares of all chunks below which a word is essential, tried in turn. One cut, 5%: on the
# retrieval bench's 100k chunks it gave the best tail (p99 132 ms against 142 for the one
# statement, p50 16 against 57); trying 1%, 10%, 25% in turn won more queries (p50 18) but
# lost more time on the failed attempts (p99 154)
CUTS = (0.05,)
MARGIN = 1.25


def idf(df: int, total: int) -> float:
    """FTS5's inverse document frequency (clamped to 1e-6 where it would be ≤ 0)."""
    value = math.log((total - df + 0.5) / (df + 0.5))
    return value if value > 0 else 1e-6


def bound(rest: Sequence[str], df: dict[str, int], total: int) -> float:
    """The most the ``rest`` words can add to one chunk's score, with the margin."""
    return MARGIN * (K1 + 1.0) * sum(idf(df.get(w, 0), total) for w in rest)


def split(words: Sequence[str], df: dict[str, int], total: int, cut: float) -> tuple[list, list]:
    """(essential, rest) of ``words`` (rarest first): at least one essential word."""
    essential = [w for w in words if df.get(w, 0) < cut * total] or list(words[:1])
    return essential, list(words[len(essential) :])


def merged(only: Sequence[Any], both: Sequence[Any], top_k: int) -> list[Any]:
    """The best ``top_k`` rows (id first, score last) of the two statements, the second
    one's score winning for a chunk in both; best first, ties by id."""
    rows = {row[0]: row for row in only}
    rows.update((row[0], row) for row in both)
    return sorted(rows.values(), key=lambda row: (-row[-1], row[0]))[:top_k]


def exact(best: Sequence[Any], top_k: int, limit: float) -> bool:
    """Whether ``best`` is the answer: full, and its last beats any chunk of the rest."""
    return len(best) == top_k and best[-1][-1] > limit
