"""The schema of flowserve's first release: orgs, keys, flow versions, runs, memory.

A database made before migrations existed holds these tables (and maybe more of what
0002 adds) and no ``alembic_version``: ``flowserve db upgrade`` stamps it at this revision
first, then applies the rest.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _at() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", _at(), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("created_at", _at(), nullable=False),
        sa.Column("revoked_at", _at(), nullable=True),
        sa.Column("allowed_origins", sa.JSON(), nullable=False),
        sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True),
    )
    op.create_index("ix_api_keys_org_id", "api_keys", ["org_id"])
    op.create_table(
        "flow_versions",
        sa.Column("pk", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("flow_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", _at(), nullable=False),
        sa.UniqueConstraint("org_id", "flow_id", "version"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("flow_id", sa.String(64), nullable=False),
        sa.Column("flow_version", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_type", sa.String(64), nullable=True),
        sa.Column("error_node", sa.String(64), nullable=True),
        sa.Column("user_id", sa.String(256), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.Column("queued_at", _at(), nullable=False),
        sa.Column("started_at", _at(), nullable=True),
        sa.Column("first_token_at", _at(), nullable=True),
        sa.Column("finished_at", _at(), nullable=True),
    )
    op.create_index("ix_runs_org_flow", "runs", ["org_id", "flow_id"])
    op.create_index("ix_runs_state", "runs", ["state"])
    op.create_table(
        "memory_turns",
        sa.Column("pk", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("flow_id", sa.String(64), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("user_text", sa.Text(), nullable=False),
        sa.Column("assistant_text", sa.Text(), nullable=False),
        sa.Column("created_at", _at(), nullable=False),
    )
    op.create_index(
        "ix_memory_key", "memory_turns", ["org_id", "flow_id", "node_id", "user_id", "pk"]
    )


def downgrade() -> None:
    for table in ("memory_turns", "runs", "flow_versions", "api_keys", "orgs"):
        op.drop_table(table)
