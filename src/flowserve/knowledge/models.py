"""The knowledge tables, on the store's one ``Base`` (so migrations are compared with them).

A knowledge base (``kind="kb"``) belongs to an org. A per-user documents bucket is the same
row with ``kind="documents"`` and its key ``(org, flow, node, user_id)``: its files, chunks
and search are a KB's, and the KB routes never see it. Files are stored on disk by content
hash (``flowserve.knowledge.blobs``); their text is kept by page, their chunks are what
search finds.

The full-text index is not modelled: on SQLite an FTS5 virtual table over ``kb_chunks``
(kept by triggers), on PostgreSQL a generated ``tsvector`` column with a GIN index, both made
by migration 0004. :func:`modelled` tells a schema comparison to leave them out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from flowserve.store.models import Base

KB = "kb"
DOCUMENTS = "documents"
FTS_TABLE = "kb_chunks_fts"  # SQLite (and its shadow tables kb_chunks_fts_*)
TSV_COLUMN = "tsv"  # PostgreSQL, on kb_chunks
FTS_KB_COLUMN = "fts_kb"  # SQLite, on kb_chunks: the KB as one token of the index (0007)
FTS_VERSION_TABLE = "kb_fts_version"  # SQLite: raised with every chunk written (0007)
TSV_INDEX = "ix_kb_chunks_tsv"


_UNMODELLED = (TSV_COLUMN, FTS_KB_COLUMN)


def modelled(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """Alembic's ``include_name``: False for the full-text objects the models do not hold."""
    if type_ == "table":
        return not (name or "").startswith((FTS_TABLE, FTS_VERSION_TABLE))
    if type_ == "column":
        return not (parent_names.get("table_name") == "kb_chunks" and name in _UNMODELLED)
    if type_ == "index":
        return name != TSV_INDEX
    return True


def _at() -> DateTime:
    return DateTime(timezone=True)


class KnowledgeBase(Base):
    __tablename__ = "knowledge_bases"
    __table_args__ = (
        # a bucket's key; KBs have NULLs here, which never collide
        UniqueConstraint("org_id", "flow_id", "node_id", "user_id", name="uq_kb_bucket"),
        Index("ix_kb_org_kind_created", "org_id", "kind", "created_at", "id"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"))
    kind: Mapped[str] = mapped_column(String(16))  # "kb" | "documents"
    flow_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)
    indexing_params: Mapped[dict[str, Any]]
    # a provider key given at create: Fernet-encrypted with the server's secret_key
    api_key_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    org_level_role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(_at())
    updated_at: Mapped[datetime] = mapped_column(_at())
    last_synced_at: Mapped[datetime | None] = mapped_column(_at(), nullable=True)
    sync_requested_at: Mapped[datetime | None] = mapped_column(_at(), nullable=True)


class KbFile(Base):
    """One file (a "resource") of a KB or bucket."""

    __tablename__ = "kb_files"
    __table_args__ = (
        UniqueConstraint("kb_id", "resource_path", name="uq_kb_files_path"),
        Index("ix_kb_files_kb_created", "kb_id", "created_at", "id"),
        Index("ix_kb_files_status", "status"),
        Index("ix_kb_files_hash", "content_hash"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kb_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"))
    resource_path: Mapped[str] = mapped_column(String(255))
    content_hash: Mapped[str] = mapped_column(String(64))
    content_mime: Mapped[str] = mapped_column(String(128))
    parser: Mapped[str] = mapped_column(String(16))  # pdf docx html md txt csv json
    size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # pending parsed indexed error
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    dataloader_metadata: Mapped[dict[str, Any]] = mapped_column(default=dict)
    user_metadata: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # bumped each time the file is queued again: an indexing of an older generation (the
    # content replaced, the KB's parameters changed) is thrown away, never written
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # the instance (process) indexing it; a pending file whose owner is dead is taken over
    owner: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(_at())
    modified_at: Mapped[datetime] = mapped_column(_at())
    indexed_at: Mapped[datetime | None] = mapped_column(_at(), nullable=True)


class KbChunk(Base):
    """A retrievable piece of a file's text: ``text == file text[char_start:char_end]``."""

    __tablename__ = "kb_chunks"
    __table_args__ = (Index("ix_kb_chunks_kb", "kb_id"), Index("ix_kb_chunks_file", "file_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("kb_files.id", ondelete="CASCADE"))
    kb_id: Mapped[str] = mapped_column(String(36))  # the file's, for filtering searches
    chunk_index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    heading: Mapped[str | None] = mapped_column(Text, nullable=True)  # "A > B > C"
    page: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 1-based (PDF)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)


class KbPage(Base):
    """A file's extracted text, by page (one row, page NULL, for a file without pages)."""

    __tablename__ = "kb_pages"
    __table_args__ = (Index("ix_kb_pages_file", "file_id", "seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("kb_files.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    page: Mapped[int | None] = mapped_column(Integer, nullable=True)
    char_start: Mapped[int] = mapped_column(Integer)  # where it starts in the file's text
    text: Mapped[str] = mapped_column(Text)


class KbVector(Base):
    """A chunk's embedding (``flowserve.knowledge.vectors``): float32 little-endian bytes,
    L2-normalised; deleted with its chunk."""

    __tablename__ = "kb_vectors"
    __table_args__ = (Index("ix_kb_vectors_kb_model", "kb_id", "model"),)
    chunk_id: Mapped[int] = mapped_column(
        ForeignKey("kb_chunks.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    kb_id: Mapped[str] = mapped_column(String(36))
    model: Mapped[str] = mapped_column(String(200))  # "<provider>.<model>"
    dimensions: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
