"""Chunk vectors for dense (semantic) retrieval: one row per chunk of a KB with an
embedding model, float32 little-endian bytes, deleted with their chunk (foreign key, cascade).
Searched by exact cosine similarity (flowserve.knowledge.vectors).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kb_vectors",
        sa.Column(
            "chunk_id",
            sa.Integer(),
            sa.ForeignKey("kb_chunks.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("kb_id", sa.String(36), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_kb_vectors_kb_model", "kb_vectors", ["kb_id", "model"])


def downgrade() -> None:
    op.drop_index("ix_kb_vectors_kb_model", table_name="kb_vectors")
    op.drop_table("kb_vectors")
