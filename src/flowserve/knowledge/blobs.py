"""Originals on disk, by content hash: ``<root>/<sha256[:2]>/<sha256>``.

A file's name never reaches the file system, so no upload can write outside the storage
directory whatever it is called. An upload streams into ``<root>/tmp/`` (same file system,
so placing it is an atomic rename) and the same bytes uploaded twice are stored once; a blob
is removed when no file row refers to it any more.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

_DIGEST = re.compile(r"[0-9a-f]{64}")


def default_root(database_url: str) -> Path:
    """``flowserve-data/kb`` beside a SQLite database file; in the working directory for
    any other database."""
    prefix = "sqlite+aiosqlite:///"
    if database_url.startswith(prefix) and ":memory:" not in database_url:
        database = Path(database_url.removeprefix(prefix).split("?", 1)[0])
        return database.parent / "flowserve-data" / "kb"
    return Path("flowserve-data") / "kb"


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        if not _DIGEST.fullmatch(digest):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / digest[:2] / digest

    def new_temp(self) -> Path:
        """A fresh path for an upload in progress (blocking: makes the directory)."""
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / uuid.uuid4().hex

    def place(self, temp: Path, digest: str) -> None:
        """Keep ``temp`` as the blob of ``digest`` (or drop it, if that blob exists)."""
        target = self.path(digest)
        if target.exists():
            temp.unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
