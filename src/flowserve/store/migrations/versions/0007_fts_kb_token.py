"""SQLite: the full-text index also holds each chunk's KB, as one token, so that a search
filters by KB inside FTS5 instead of looking up every matching chunk's row (at 100k chunks
that lookup was most of a query's time: p50 86 ms with it, 24 ms without; see
flowserve.knowledge.fts5). PostgreSQL is unchanged.

The token is ``hex(kb_id) || '0'``: hexadecimal digits only, so FTS5's tokenizer keeps it
whole whatever the KB's id holds, and ending in a digit, so the Porter stemmer leaves it as
it is. It is a virtual generated column of ``kb_chunks`` (nothing stored twice), which the
index reads on ``rebuild`` like the text and the heading.

``kb_fts_version`` holds one number, raised by the same triggers with every chunk written or
deleted: the searches' cached word counts are valid while it is unchanged. It is a table of
its own rather than a read of FTS5's structure record, whose layout is FTS5's internal
format.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TOKENIZE = "tokenize='porter unicode61 remove_diacritics 2'"


def _index(columns: str, bump: str = "") -> list[str]:
    new = ", ".join(f"new.{c}" for c in columns.split(", "))
    old = ", ".join(f"old.{c}" for c in columns.split(", "))
    return [
        f"CREATE VIRTUAL TABLE kb_chunks_fts USING fts5({columns}, content='kb_chunks', "
        f"content_rowid='id', {_TOKENIZE})",
        "CREATE TRIGGER kb_chunks_fts_insert AFTER INSERT ON kb_chunks BEGIN "
        f"INSERT INTO kb_chunks_fts(rowid, {columns}) VALUES (new.id, {new}); {bump}END",
        "CREATE TRIGGER kb_chunks_fts_delete AFTER DELETE ON kb_chunks BEGIN "
        f"INSERT INTO kb_chunks_fts(kb_chunks_fts, rowid, {columns}) "
        f"VALUES ('delete', old.id, {old}); {bump}END",
        "INSERT INTO kb_chunks_fts(kb_chunks_fts) VALUES ('rebuild')",
    ]


def _drop_index() -> None:
    op.execute("DROP TRIGGER IF EXISTS kb_chunks_fts_insert")
    op.execute("DROP TRIGGER IF EXISTS kb_chunks_fts_delete")
    op.execute("DROP TABLE IF EXISTS kb_chunks_fts")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _drop_index()
    op.execute(
        "ALTER TABLE kb_chunks ADD COLUMN fts_kb TEXT "
        "GENERATED ALWAYS AS (hex(kb_id) || '0') VIRTUAL"
    )
    op.execute(
        "CREATE TABLE kb_fts_version (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)"
    )
    op.execute("INSERT INTO kb_fts_version (id, n) VALUES (1, 0)")
    bump = "UPDATE kb_fts_version SET n = n + 1 WHERE id = 1; "
    for statement in _index("text, heading, fts_kb", bump):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _drop_index()
    op.execute("DROP TABLE IF EXISTS kb_fts_version")
    op.execute("ALTER TABLE kb_chunks DROP COLUMN fts_kb")
    for statement in _index("text, heading"):
        op.execute(statement)
