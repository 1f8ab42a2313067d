"""DOCX, with python-docx (maintained, reads the body in order: paragraphs and tables).

Its XML parser resolves no entities; the container itself is checked before it opens
(``flowserve.knowledge.formats.check_zip``: entry count, total uncompressed size and ratio).
Paragraph styles ``Title`` and ``Heading N`` are headings; a table row is one block, its
cells separated by `` | ``.
"""

from __future__ import annotations

from pathlib import Path

from flowserve.errors import BadFileError
from flowserve.knowledge.parsers import ParsedDocument, TextBuilder


def _level(style_name: str) -> int:
    if style_name == "Title":
        return 1
    if style_name.startswith("Heading "):
        digits = style_name.removeprefix("Heading ").strip()
        if digits.isdigit():
            return min(max(int(digits), 1), 6)
    return 0


def parse(path: Path) -> ParsedDocument:
    from flowserve.knowledge.formats import check_zip

    check_zip(path)
    import docx
    from docx.table import Table

    builder = TextBuilder("docx")
    try:
        document = docx.Document(str(path))
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                for row in item.rows:
                    builder.add(" | ".join(cell.text for cell in row.cells))
                continue
            style = item.style.name if item.style is not None else ""
            builder.add(item.text, heading=_level(style or ""))
    except BadFileError:
        raise
    except Exception as exc:
        raise BadFileError(f"the Word document cannot be read: {str(exc)[:200]}") from None
    return builder.build()
