"""Alembic migrations of flowserve's schema (SQLite and PostgreSQL); see ``store/schema.py``."""
