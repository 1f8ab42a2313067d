"""Plain text, CSV and JSON: read as text (UTF-8, or UTF-8/UTF-16 with a byte-order mark).

The document's text is the file's own, so chunk offsets point into the original. Plain text
and JSON are split into paragraphs at blank lines; CSV into its lines (one record each).
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from flowserve.errors import BadFileError
from flowserve.knowledge.parsers import MAX_TEXT_CHARS, Block, ParsedDocument, spans

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def encoding_of(head: bytes) -> str:
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    return "utf-8"


def decode_file(path: Path, limit: int = MAX_TEXT_CHARS) -> str:
    """The file's text; BadFileError if it is not UTF-8 (or UTF-16 with a BOM), holds NUL
    characters (binary), or more than ``limit`` characters."""
    with path.open("rb") as handle:
        head = handle.read(4)
        decoder = codecs.getincrementaldecoder(encoding_of(head))("strict")
        parts: list[str] = []
        size = 0
        chunk = head
        try:
            while chunk:
                text = decoder.decode(chunk)
                parts.append(text)
                size += len(text)
                if size > limit:
                    raise BadFileError(f"the file holds more than {limit} characters of text")
                chunk = handle.read(1 << 20)
            parts.append(decoder.decode(b"", final=True))
        except UnicodeDecodeError:
            raise BadFileError(
                "the file is not UTF-8 text (nor UTF-16 with a byte-order mark)"
            ) from None
    text = "".join(parts)
    if "\x00" in text:
        raise BadFileError("the file holds NUL characters: it is binary, not text")
    return text


def _split(text: str, separator: re.Pattern[str], parser: str) -> ParsedDocument:
    blocks: list[Block] = []
    start = 0
    for match in separator.finditer(text):
        if (span := spans(text, start, match.start())) is not None:
            blocks.append(Block(*span))
        start = match.end()
    if (span := spans(text, start, len(text))) is not None:
        blocks.append(Block(*span))
    return ParsedDocument(text, tuple(blocks), parser)


def parse_plain(path: Path) -> ParsedDocument:
    return _split(decode_file(path), _BLANK_LINE, "txt")


def parse_lines(path: Path) -> ParsedDocument:
    return _split(decode_file(path), re.compile(r"\n"), "csv")
