"""Citations and retrievals on each run (knowledge-base and files nodes, contract 3.7).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("citations", sa.JSON(), nullable=True))
    op.add_column("runs", sa.Column("retrievals", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "retrievals")
    op.drop_column("runs", "citations")
