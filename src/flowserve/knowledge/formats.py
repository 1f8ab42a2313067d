"""What an uploaded file is, decided before it is stored (contract 3.4).

By its bytes first (magic numbers), then its extension: a PDF (``%PDF-`` in its first KiB),
a DOCX (a ZIP holding ``word/document.xml``), or text (UTF-8, or UTF-8/UTF-16 with a BOM)
named ``.txt .md .html .csv .json`` (or with no extension). Another known binary type, or an
unknown extension, is refused 415 naming the type; a name and bytes that disagree (``.pdf``
that is not one), a container that will not open, or text that does not decode, 422
``corrupt_file``. The ZIP of a DOCX is checked before anything reads it: at most
:data:`MAX_ENTRIES` entries, :data:`MAX_UNCOMPRESSED` bytes in all, and no entry larger than
:data:`MAX_RATIO` times its compressed size (Python's zipfile stops reading an entry at its
declared size, so these checks bind). All blocking: run them in a worker thread.
"""

from __future__ import annotations

import mimetypes
import zipfile
from dataclasses import dataclass
from pathlib import Path

from flowserve.errors import BadFileError, UnsupportedMediaTypeError

MIME = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "txt": "text/plain",
    "md": "text/markdown",
    "html": "text/html",
    "csv": "text/csv",
    "json": "application/json",
}
SUPPORTED = ", ".join(MIME)
EXTENSIONS = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".txt": "txt",
    ".text": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".csv": "csv",
    ".json": "json",
}
_BINARY = (  # signatures of types we do not read, to name them in the 415
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\x1f\x8b", "application/gzip"),
    (b"BZh", "application/x-bzip2"),
    (b"\xfd7zXZ\x00", "application/x-xz"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"Rar!\x1a\x07", "application/vnd.rar"),
    (b"\x7fELF", "application/x-executable"),
    (b"MZ", "application/x-msdownload"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),
    (b"{\\rtf", "application/rtf"),
    (b"%!PS", "application/postscript"),
    (b"OggS", "audio/ogg"),
    (b"ID3", "audio/mpeg"),
    (b"fLaC", "audio/flac"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"SQLite format 3\x00", "application/vnd.sqlite3"),
)
MAX_ENTRIES = 10_000
MAX_UNCOMPRESSED = 256 * 1024 * 1024
MAX_RATIO = 100
_RATIO_FROM = 1024 * 1024  # entries smaller than this may compress as well as they like


@dataclass(frozen=True, slots=True)
class Sniffed:
    parser: str  # a key of MIME
    mime: str


def _unsupported(mime: str) -> UnsupportedMediaTypeError:
    return UnsupportedMediaTypeError(f"unsupported file type {mime!r}; supported: {SUPPORTED}")


def check_zip(path: Path) -> list[str]:
    """The names in the ZIP at ``path``, once it is known safe to open; BadFileError if it
    does not open, is encrypted, or would expand too far (a zip bomb)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise BadFileError(f"the ZIP container does not open: {str(exc)[:200]}") from None
    if len(infos) > MAX_ENTRIES:
        raise BadFileError(f"the ZIP container has more than {MAX_ENTRIES} entries")
    total = 0
    for info in infos:
        if info.flag_bits & 0x1:
            raise BadFileError("the ZIP container is encrypted")
        total += info.file_size
        if info.file_size > _RATIO_FROM and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise BadFileError(
                f"the ZIP container looks like a zip bomb: {info.filename[:100]!r} expands "
                f"more than {MAX_RATIO} times"
            )
    if total > MAX_UNCOMPRESSED:
        raise BadFileError(
            f"the ZIP container looks like a zip bomb: it expands to more than "
            f"{MAX_UNCOMPRESSED // (1024 * 1024)} MiB"
        )
    return [info.filename for info in infos]


def _check_pdf(path: Path) -> None:
    from flowserve.knowledge.parsers.pdf import open_reader

    open_reader(path)  # an encrypted one opens: indexing says it cannot read it


def _check_text(path: Path) -> None:
    from flowserve.knowledge.parsers.text import decode_file

    decode_file(path)


def _extension(filename: str) -> str:
    dot = filename.rfind(".")
    return filename[dot:].lower() if dot > 0 else ""


def sniff(path: Path, filename: str) -> Sniffed:
    """What the file at ``path`` (uploaded as ``filename``) is, or the 415/422 refusing it."""
    with path.open("rb") as handle:
        head = handle.read(1024)
    extension = _extension(filename)
    named = EXTENSIONS.get(extension)
    found: str | None = None
    if b"%PDF-" in head:
        found = "pdf"
    elif head.startswith(b"PK\x03\x04"):
        names = check_zip(path)
        if "word/document.xml" not in names:
            if named == "docx":
                raise BadFileError("the file is named .docx but is not a Word document")
            raise _unsupported("application/zip")
        found = "docx"
    else:
        for magic, mime in _BINARY:
            if head.startswith(magic):
                if named in ("pdf", "docx"):
                    raise BadFileError(f"the file is named {extension} but holds {mime}")
                raise _unsupported(mime)
    if found is not None:
        if named is not None and named != found:
            raise BadFileError(f"the file is named {extension} but holds {MIME[found]}")
        if found == "pdf":
            _check_pdf(path)
        return Sniffed(found, MIME[found])
    if named in ("pdf", "docx"):
        raise BadFileError(f"the file is named {extension} but is not a {named.upper()} file")
    if named is None and extension:
        raise _unsupported(mimetypes.guess_type(filename)[0] or "application/octet-stream")
    if named is None:  # no extension: text, or nothing we read
        try:
            _check_text(path)
        except BadFileError:
            raise _unsupported("application/octet-stream") from None
        start = head.lstrip()[:15].lower()
        named = "html" if start.startswith((b"<!doctype html", b"<html")) else "txt"
        return Sniffed(named, MIME[named])
    _check_text(path)
    return Sniffed(named, MIME[named])
