"""Reading a stored file into text with its structure: one module per format family.

Every parser gives a :class:`ParsedDocument`: the document's text and its blocks (headings
and paragraphs, each a span of that text, with its page where the format has pages). For
plain text, Markdown, CSV and JSON the text is the file's own (decoded), so offsets point
into the original; for PDF, DOCX and HTML it is the extracted text, paragraphs separated by
a blank line. A file that cannot be read raises :class:`~flowserve.errors.BadFileError`
(``corrupt_file``) with a message for the user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from flowserve.errors import BadFileError

MAX_TEXT_CHARS = 20_000_000  # of extracted text per file: beyond, the file is refused


@dataclass(frozen=True, slots=True)
class Block:
    start: int
    end: int  # text[start:end] is the block, stripped
    heading: int = 0  # 0: body; 1-6: a heading of that level
    page: int | None = None  # 1-based, formats with pages only


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    text: str
    blocks: tuple[Block, ...]
    parser: str
    pages: int | None = None  # how many, for formats with pages


class TextBuilder:
    """Builds an extracted text from pieces, a blank line between blocks."""

    def __init__(self, parser: str) -> None:
        self.parser = parser
        self.parts: list[str] = []
        self.blocks: list[Block] = []
        self.length = 0

    def add(self, text: str, heading: int = 0, page: int | None = None) -> None:
        text = " ".join(text.replace("\x00", "").split())
        if not text:
            return
        if self.parts:
            self.parts.append("\n\n")
            self.length += 2
        self.parts.append(text)
        self.blocks.append(Block(self.length, self.length + len(text), heading, page))
        self.length += len(text)
        if self.length > MAX_TEXT_CHARS:
            raise BadFileError(f"the file holds more than {MAX_TEXT_CHARS} characters of text")

    def build(self, pages: int | None = None) -> ParsedDocument:
        return ParsedDocument("".join(self.parts), tuple(self.blocks), self.parser, pages)


def spans(text: str, start: int, end: int) -> tuple[int, int] | None:
    """``(start, end)`` narrowed to exclude surrounding whitespace; None if nothing is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _parsers() -> dict[str, Callable[[Path], ParsedDocument]]:
    from flowserve.knowledge.parsers import markup, office, pdf, text

    return {
        "pdf": pdf.parse,
        "docx": office.parse,
        "html": markup.parse_html,
        "md": markup.parse_markdown,
        "txt": text.parse_plain,
        "json": text.parse_plain,
        "csv": text.parse_lines,
    }


def parse(parser: str, path: Path) -> ParsedDocument:
    """The document in ``path`` read by ``parser`` (one of the names formats.sniff gives).
    Blocking: call it in a worker thread."""
    document = replace(_parsers()[parser](path), parser=parser)
    if not document.blocks:
        raise BadFileError("the file holds no extractable text")
    return document
