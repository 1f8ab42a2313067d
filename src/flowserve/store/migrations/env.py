"""Alembic's entry point, run by ``flowserve.store.schema`` on a connection it opened.

There is no ``alembic.ini`` and no URL here: flowserve hands Alembic the connection (and the
settings it came from), so migrations run exactly where the server would connect.
"""

from __future__ import annotations

from alembic import context

from flowserve.knowledge.models import modelled
from flowserve.store.models import Base

connection = context.config.attributes["connection"]
# The full-text index objects (FTS5 tables, the tsvector column) are made by the migrations
# only: autogenerate must not offer to drop them.
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    include_name=modelled,  # type: ignore[arg-type]  # its parent_names is a plain dict
)
with context.begin_transaction():
    context.run_migrations()
