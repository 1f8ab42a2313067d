"""Receiving one uploaded file: a ``multipart/form-data`` body read as it arrives, its
``file`` part streamed to a temporary file in the storage directory and hashed on the way.

python-multipart's streaming parser (Starlette's own form parser uses it) sees each chunk
once; the file part's bytes are written out in pieces of at most 1 MiB, so an upload is
never held whole in memory. The size is refused (413) from ``Content-Length`` before
reading, then as soon as the bytes read pass the limit; nothing is kept of a refused upload.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from flowserve.errors import BadFileError, InputError, PayloadTooLargeError
from flowserve.knowledge.blobs import BlobStore

MIB = 1024 * 1024
OVERHEAD = MIB  # multipart framing and other parts, beyond the file itself
_FLUSH = MIB
MAX_NAME = 255


def human(limit: int) -> str:
    return f"{limit // MIB} MiB" if limit % MIB == 0 else f"{limit} bytes"


def clean_name(raw: str | None) -> str:
    """The stored name of an upload: no directories, NULs or control characters, at most
    255 characters (its extension kept), ``upload`` if nothing is left."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf")).strip()
    if name in ("", ".", ".."):
        return "upload"
    if len(name) > MAX_NAME:
        dot = name.rfind(".")
        extension = name[dot:] if dot > 0 and len(name) - dot <= 16 else ""
        name = name[: MAX_NAME - len(extension)] + extension
    return name


@dataclass(slots=True)
class Received:
    temp: Path
    size: int
    sha256: str
    filename: str

    def discard(self) -> None:
        self.temp.unlink(missing_ok=True)


class _FilePart:
    """The state of one parse: which part is being read and where the file goes."""

    def __init__(self, blobs: BlobStore, limit: int) -> None:
        self.blobs, self.limit = blobs, limit
        self.header_field = b""
        self.headers: dict[bytes, bytes] = {}
        self.in_file = False  # the current part is the file
        self.started = self.ended = False
        self.filename: str | None = None
        self.temp: Path | None = None
        self.handle: IO[bytes] | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.size = 0
        self.hash = hashlib.sha256()

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        name = self.header_field.lower()
        self.headers[name] = self.headers.get(name, b"") + data[start:end]

    def on_header_end(self) -> None:
        self.header_field = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.in_file = options.get(b"name") == b"file" and b"filename" in options
        if not self.in_file:
            return
        if self.started:
            raise BadFileError("the form has more than one 'file' part", "too_many_files")
        self.started = True
        self.filename = clean_name(options[b"filename"].decode("utf-8", "replace"))
        self.temp = self.blobs.new_temp()
        self.handle = self.temp.open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.in_file:
            return
        piece = data[start:end]
        self.size += len(piece)
        if self.size > self.limit:
            raise PayloadTooLargeError(f"file exceeds the {human(self.limit)} limit")
        self.pending.append(piece)
        self.pending_size += len(piece)

    def on_part_end(self) -> None:
        if self.in_file:
            self.ended = True
        self.in_file = False

    def write_pending(self) -> None:
        """Blocking: the bytes gathered so far, to the file and the hash."""
        assert self.handle is not None
        for piece in self.pending:
            self.handle.write(piece)
            self.hash.update(piece)
        self.pending.clear()
        self.pending_size = 0

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


async def receive(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    limit: int,
    blobs: BlobStore,
) -> Received:
    """The uploaded file, in a temporary file the caller places or discards."""
    media, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if media != b"multipart/form-data" or not boundary:
        raise BadFileError("expected a multipart/form-data body with a 'file' part", "missing")
    declared = content_length or ""
    if declared.isdigit() and int(declared) > limit + OVERHEAD:
        raise PayloadTooLargeError(f"file exceeds the {human(limit)} limit")
    part = _FilePart(blobs, limit)
    callbacks = {
        name: getattr(part, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
        )
    }
    parser = MultipartParser(boundary, callbacks, max_size=limit + OVERHEAD)  # type: ignore[arg-type]
    total = 0
    done = False
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > limit + OVERHEAD:
                raise PayloadTooLargeError(f"file exceeds the {human(limit)} limit")
            parser.write(chunk)
            if part.pending_size >= _FLUSH:
                await anyio.to_thread.run_sync(part.write_pending)
        parser.finalize()
        if part.handle is not None:
            await anyio.to_thread.run_sync(part.write_pending)
        if not part.started:
            raise BadFileError("no 'file' part in the form", "missing")
        if not part.ended:
            raise InputError("the multipart body ended before the file did", ("body",))
        if part.size == 0:
            raise BadFileError("the file is empty", "empty_file")
        done = True
    except FormParserError:
        raise InputError("the multipart body is malformed", ("body",)) from None
    finally:
        part.close()
        if not done and part.temp is not None:
            part.temp.unlink(missing_ok=True)
    assert part.temp is not None and part.filename is not None
    return Received(part.temp, part.size, part.hash.hexdigest(), part.filename)
