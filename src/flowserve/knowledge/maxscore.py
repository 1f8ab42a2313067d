"""Exact top-k BM25 without scoring every matching chunk: MaxScore, on top of FTS5.

FTS5 scores every chunk its expression matches. BM25 is a sum over the query's words, each
word's share less than ``idf * (k1 + 1)`` (term-frequency saturation; FTS5's k1 = 1.2, the
text column's weight 1 the largest). So the words, rarest first, are split into an
*essential* prefix and the *rest*, and flowserve.knowledge.fts5 runs

    KB AND {text heading} : (essential OR …) AND ({text heading} : (rest OR …) OR KB)

where ``KB`` is the KB's own token (migration 0007), found in every chunk of the KB (where
the KBs' span of chunk ids is theirs alone and flowrank ranks, the essential words stand in
for it: ``essential AND (rest OR essential)``, the second copy given to flowrank as weighing
nothing). It
matches only chunks holding an essential word, but scores them on **every** word: the last
group always matches, and FTS5 counts a phrase's hits in a chunk wherever the phrase's own
branch matched, so a rest word in the chunk counts as it does in the full statement (the KB
token weighs 0). Its best ``top_k`` are the exact best among the chunks holding an essential
word, and a chunk holding none scores less than :func:`bound` of the rest: when the
``top_k``-th best beats that, the answer is exact.

Two rounds at most. The first takes as essential the words in fewer than :data:`CUT` of all
chunks. If it is not provably exact, its ``top_k``-th score is a lower bound on the
answer's, and :func:`grow` adds words to the essential ones (rarest first) until the rest's
bound is below it: that second round is exact by construction. When every word would be
essential, the one full statement runs instead. (Skipping a second round that would match
nearly as many chunks as the full statement gained nothing once the cut was 10%.)

The bound takes no margin: the word counts and the table's size it uses are exact for the
version of the index the statements read (fts5.py checks the version before and after),
and every share is strictly below its ``idf * (k1 + 1)``. The scores are the full
statement's to the last bit because the phrases come in the same order (rarest first) and
the KB token's phrases add exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

K1 = 1.2  # FTS5's bm25()
# share of all chunks below which a word is essential in the first round. At 100k chunks of
# man pages (600 queries, two ranges): p99 26 ms at 0.1 (p50 14), 37 at 0.05 (p50 13),
# 26 at 0.08, 29 at 0.12, 30 at 0.15, 38 at 0.2
CUT = 0.1


def idf(df: int, total: int) -> float:
    """FTS5's inverse document frequency (clamped to 1e-6 where it would be ≤ 0)."""
    value = math.log((total - df + 0.5) / (df + 0.5))
    return value if value > 0 else 1e-6


def bound(rest: Sequence[str], df: dict[str, int], total: int) -> float:
    """More than the ``rest`` words can add to any one chunk's score."""
    return (K1 + 1.0) * sum(idf(df.get(w, 0), total) for w in rest)


def split(words: Sequence[str], df: dict[str, int], total: int) -> int:
    """How many of ``words`` (rarest first) are essential in the first round: those in
    fewer than :data:`CUT` of the chunks, at least one."""
    return max(1, sum(1 for w in words if df.get(w, 0) < CUT * total))


def grow(words: Sequence[str], df: dict[str, int], total: int, start: int, floor: float) -> int:
    """The fewest essential words, from ``start`` on, that leave a rest bounded below
    ``floor`` (the score the answer's ``top_k``-th is known to reach)."""
    n = start
    while n < len(words) and not bound(words[n:], df, total) < floor:
        n += 1
    return n


def exact(best: Sequence[Any], top_k: int, limit: float) -> bool:
    """Whether ``best`` (score last) is the answer: full, and its last beats ``limit``."""
    return len(best) == top_k and best[-1][-1] > limit
