"""Knowledge bases, per-user document buckets, their files, pages and chunks, and the
full-text index of the chunks: an FTS5 table kept by triggers on SQLite, a generated
``tsvector`` column with a GIN index on PostgreSQL (flowserve.knowledge.search).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Porter stemming over Unicode words, diacritics folded: "Refunds" finds "refund".
_FTS5 = (
    "CREATE VIRTUAL TABLE kb_chunks_fts USING fts5(text, heading, content='kb_chunks', "
    "content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')"
)
_TRIGGERS = (
    "CREATE TRIGGER kb_chunks_fts_insert AFTER INSERT ON kb_chunks BEGIN "
    "INSERT INTO kb_chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading); "
    "END",
    "CREATE TRIGGER kb_chunks_fts_delete AFTER DELETE ON kb_chunks BEGIN "
    "INSERT INTO kb_chunks_fts(kb_chunks_fts, rowid, text, heading) "
    "VALUES ('delete', old.id, old.text, old.heading); END",
)
# English stemming and stop words; the heading weighs less than the text (B < A).
_TSV = (
    "ALTER TABLE kb_chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS ("
    "setweight(to_tsvector('english', text), 'A') || "
    "setweight(to_tsvector('english', coalesce(heading, '')), 'B')) STORED"
)


def _at() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "knowledge_bases",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("flow_id", sa.String(64), nullable=True),
        sa.Column("node_id", sa.String(64), nullable=True),
        sa.Column("user_id", sa.String(256), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("indexing_params", sa.JSON(), nullable=False),
        sa.Column("api_key_encrypted", sa.Text(), nullable=True),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("org_level_role", sa.String(16), nullable=True),
        sa.Column("created_at", _at(), nullable=False),
        sa.Column("updated_at", _at(), nullable=False),
        sa.Column("last_synced_at", _at(), nullable=True),
        sa.Column("sync_requested_at", _at(), nullable=True),
        sa.UniqueConstraint("org_id", "flow_id", "node_id", "user_id", name="uq_kb_bucket"),
    )
    op.create_index(
        "ix_kb_org_kind_created", "knowledge_bases", ["org_id", "kind", "created_at", "id"]
    )
    op.create_table(
        "kb_files",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "kb_id",
            sa.String(36),
            sa.ForeignKey("knowledge_bases.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("resource_path", sa.String(255), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("content_mime", sa.String(128), nullable=False),
        sa.Column("parser", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("dataloader_metadata", sa.JSON(), nullable=False),
        sa.Column("user_metadata", sa.JSON(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(32), nullable=True),
        sa.Column("created_at", _at(), nullable=False),
        sa.Column("modified_at", _at(), nullable=False),
        sa.Column("indexed_at", _at(), nullable=True),
        sa.UniqueConstraint("kb_id", "resource_path", name="uq_kb_files_path"),
    )
    op.create_index("ix_kb_files_kb_created", "kb_files", ["kb_id", "created_at", "id"])
    op.create_index("ix_kb_files_status", "kb_files", ["status"])
    op.create_index("ix_kb_files_hash", "kb_files", ["content_hash"])
    op.create_table(
        "kb_chunks",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "file_id",
            sa.String(36),
            sa.ForeignKey("kb_files.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kb_id", sa.String(36), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("heading", sa.Text(), nullable=True),
        sa.Column("page", sa.Integer(), nullable=True),
        sa.Column("char_start", sa.Integer(), nullable=False),
        sa.Column("char_end", sa.Integer(), nullable=False),
    )
    op.create_index("ix_kb_chunks_kb", "kb_chunks", ["kb_id"])
    op.create_index("ix_kb_chunks_file", "kb_chunks", ["file_id"])
    op.create_table(
        "kb_pages",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "file_id",
            sa.String(36),
            sa.ForeignKey("kb_files.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("page", sa.Integer(), nullable=True),
        sa.Column("char_start", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
    )
    op.create_index("ix_kb_pages_file", "kb_pages", ["file_id", "seq"])
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(_FTS5)
        for trigger in _TRIGGERS:
            op.execute(trigger)
    elif dialect == "postgresql":
        op.execute(_TSV)
        op.execute("CREATE INDEX ix_kb_chunks_tsv ON kb_chunks USING gin (tsv)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS kb_chunks_fts_insert")
        op.execute("DROP TRIGGER IF EXISTS kb_chunks_fts_delete")
        op.execute("DROP TABLE IF EXISTS kb_chunks_fts")
    for table in ("kb_pages", "kb_chunks", "kb_files", "knowledge_bases"):
        op.drop_table(table)
