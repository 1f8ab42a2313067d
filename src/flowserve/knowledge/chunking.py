"""Cutting a parsed document into chunks by its structure, with overlap.

A heading starts a *section* (its heading path: the titles of the headings above it and its
own), and so does a new page (PDF): no chunk crosses from one section into another, so each
chunk has one page to cite; within a section, chunks are made
of the section's sentences (``sentence``, the default: split after ``.``, ``!``, ``?`` and
at paragraph ends, packed up to ``chunk_size`` characters; the next chunk starts with the
last whole sentences of the previous one, up to ``chunk_overlap`` characters) or are fixed
windows of ``chunk_size`` characters, ``chunk_size - chunk_overlap`` apart (``naive``). A
sentence longer than a chunk is cut at a space.

Every chunk is a span of the document's text: ``chunk.text == text[chunk.start:chunk.end]``
(stripped of surrounding whitespace).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from flowserve.knowledge.parsers import Block, ParsedDocument, spans
from flowserve.knowledge.parsers.markup import heading_title

SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*(?=\s)|\n\s*\n")
HEADING_SEPARATOR = " > "


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int  # 0-based within the document
    start: int
    end: int
    text: str
    page: int | None
    heading: tuple[str, ...]  # the heading path, outermost first

    @property
    def heading_path(self) -> str | None:
        return HEADING_SEPARATOR.join(self.heading) or None


@dataclass(frozen=True, slots=True)
class _Span:
    start: int
    end: int
    page: int | None


@dataclass(slots=True)
class _Section:
    heading: tuple[str, ...]
    blocks: list[Block]


def sections(document: ParsedDocument) -> Iterator[_Section]:
    """The document's blocks grouped under their headings."""
    path: list[tuple[int, str]] = []
    current = _Section((), [])
    for block in document.blocks:
        if block.heading:
            if current.blocks:
                yield current
            while path and path[-1][0] >= block.heading:
                path.pop()
            path.append((block.heading, heading_title(document, block)))
            current = _Section(tuple(title for _, title in path), [block])
        else:
            if current.blocks and current.blocks[-1].page != block.page:  # a new page
                yield current
                current = _Section(current.heading, [])
            current.blocks.append(block)
    if current.blocks:
        yield current


def _cut(text: str, start: int, end: int, size: int) -> Iterator[tuple[int, int]]:
    """``text[start:end]`` in pieces of at most ``size`` characters, cut at spaces where
    one is found in the second half of a piece."""
    while end - start > size:
        limit = start + size
        cut = max(text.rfind(" ", start + size // 2, limit + 1), text.rfind("\n", start, limit + 1))
        cut = cut if cut > start + size // 2 else limit
        if (span := spans(text, start, cut)) is not None:
            yield span
        start = cut
    if (span := spans(text, start, end)) is not None:
        yield span


def _sentences(text: str, blocks: list[Block], size: int) -> list[_Span]:
    found: list[_Span] = []
    for block in blocks:
        start = block.start
        ends = [m.end() for m in SENTENCE_END.finditer(text, block.start, block.end)]
        for end in [*ends, block.end]:
            for piece in _cut(text, start, min(end, block.end), size):
                found.append(_Span(*piece, block.page))
            start = end
    return found


def _pack(spans_: list[_Span], size: int, overlap: int) -> Iterator[tuple[int, int, int | None]]:
    i, n = 0, len(spans_)
    while i < n:
        j = i
        while j + 1 < n and spans_[j + 1].end - spans_[i].start <= size:
            j += 1
        yield spans_[i].start, spans_[j].end, spans_[i].page
        if j + 1 >= n:
            return
        # The next chunk repeats the last sentences that fit in the overlap, and must still
        # take the next sentence (so each chunk is new text).
        k = j + 1
        while (
            k - 1 > i
            and spans_[j].end - spans_[k - 1].start <= overlap
            and spans_[j + 1].end - spans_[k - 1].start <= size
        ):
            k -= 1
        i = k


def _windows(
    text: str, blocks: list[Block], size: int, overlap: int
) -> Iterator[tuple[int, int, int | None]]:
    start, end = blocks[0].start, blocks[-1].end
    step = size - overlap
    at = start
    while at < end:
        span = spans(text, at, min(at + size, end))
        if span is not None:
            page = next((b.page for b in reversed(blocks) if b.start <= span[0]), blocks[0].page)
            yield span[0], span[1], page
        if at + size >= end:
            return
        at += step


def chunk(
    document: ParsedDocument, size: int = 1500, overlap: int = 500, kind: str = "sentence"
) -> list[Chunk]:
    """The document's chunks, in order."""
    if not 0 <= overlap < size:
        raise ValueError("chunk_overlap must be at least 0 and less than chunk_size")
    text = document.text
    chunks: list[Chunk] = []
    for section in sections(document):
        if kind == "naive":
            pieces = _windows(text, section.blocks, size, overlap)
        else:
            pieces = _pack(_sentences(text, section.blocks, size), size, overlap)
        for start, end, page in pieces:
            chunks.append(Chunk(len(chunks), start, end, text[start:end], page, section.heading))
    return chunks
