"""Alembic's entry point, run by ``flowserve.store.schema`` on a connection it opened.

There is no ``alembic.ini`` and no URL here: flowserve hands Alembic the connection (and the
settings it came from), so migrations run exactly where the server would connect.
"""

from __future__ import annotations

from alembic import context

from flowserve.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
