"""PDF, with pypdf: pure Python (nothing to compile), maintained, and it tells an encrypted
file apart (it opens those with an empty user password itself, as readers do).

Each page's text is split into paragraphs at blank lines, each paragraph's lines joined;
every block keeps its page. A PDF with a password, or whose pages hold no text (a scan:
there is no OCR engine), is refused with a message saying so.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from flowserve.errors import BadFileError
from flowserve.knowledge.parsers import ParsedDocument, TextBuilder

MAX_PAGES = 10_000
_PARAGRAPH = re.compile(r"\n\s*\n")
logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings are about the file


def open_reader(path: Path):  # -> pypdf.PdfReader (lazily imported)
    from pypdf import PasswordType, PdfReader

    try:
        reader = PdfReader(path)
    except Exception as exc:
        raise BadFileError(f"the PDF cannot be read: {str(exc)[:200]}") from None
    encrypted = False
    if reader.is_encrypted:
        try:
            encrypted = reader.decrypt("") == PasswordType.NOT_DECRYPTED
        except Exception:
            encrypted = True
    return reader, encrypted


def parse(path: Path) -> ParsedDocument:
    reader, encrypted = open_reader(path)
    if encrypted:
        raise BadFileError("the PDF is encrypted with a password: its text cannot be read")
    builder = TextBuilder("pdf")
    try:
        count = len(reader.pages)
        if count > MAX_PAGES:
            raise BadFileError(f"the PDF has {count} pages (the limit is {MAX_PAGES})")
        for number, page in enumerate(reader.pages, start=1):
            for paragraph in _PARAGRAPH.split(page.extract_text() or ""):
                builder.add(paragraph, page=number)
    except BadFileError:
        raise
    except Exception as exc:
        raise BadFileError(f"the PDF cannot be read: {str(exc)[:200]}") from None
    if not builder.blocks:
        raise BadFileError(
            "the PDF holds no extractable text (a scanned document? OCR is not available)"
        )
    return builder.build(pages=count)
