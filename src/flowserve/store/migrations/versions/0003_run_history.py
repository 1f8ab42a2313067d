"""Run history: per-node timings on each run, and the index its listing reads.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("nodes", sa.JSON(), nullable=True))
    op.create_index("ix_runs_org_queued", "runs", ["org_id", "queued_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_runs_org_queued", "runs")
    op.drop_column("runs", "nodes")
