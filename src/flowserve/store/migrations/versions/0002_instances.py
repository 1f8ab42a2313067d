"""Live instances and each run's owner, so that a dead process's runs are found.

Databases made between this change and migrations already have both (the server added them
at start); they are added only where missing.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("instances"):
        op.create_table(
            "instances",
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("hostname", sa.String(255), nullable=False),
            sa.Column("node", sa.String(200), nullable=False),
            sa.Column("pid", sa.Integer(), nullable=False),
            sa.Column("pid_started", sa.String(32), nullable=False),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        )
    if "owner" not in {c["name"] for c in inspector.get_columns("runs")}:
        op.add_column("runs", sa.Column("owner", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "owner")
    op.drop_table("instances")
