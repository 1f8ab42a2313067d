"""Persistence through SQLAlchemy (async). SQLite is the embedded default; the URL is
configuration, so PostgreSQL plugs in without touching the rest."""

from flowserve.store.database import Database

__all__ = ["Database"]
