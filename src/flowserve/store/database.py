"""Engine, sessions and schema creation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from flowserve.store.models import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        self.engine = create_async_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def create_schema(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            await conn.run_sync(_add_new_columns)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session, session.begin():
            yield session

    async def aclose(self) -> None:
        await self.engine.dispose()


# Columns added to a table after its first release. There is no migration framework:
# ``create_all`` creates missing tables but never alters one, so each nullable column added
# later is listed here and added to older databases at start.
ADDED_COLUMNS = [("runs", "owner", "VARCHAR(32)"), ("runs", "nodes", "JSON")]


def _add_new_columns(conn: Connection) -> None:
    inspector = inspect(conn)
    # Several processes may start together on one PostgreSQL database: IF NOT EXISTS makes the
    # race harmless there. SQLite lacks it, but one process owns an SQLite file at start.
    if_absent = "" if conn.dialect.name == "sqlite" else "IF NOT EXISTS "
    for table, column, ddl in ADDED_COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {if_absent}{column} {ddl}"))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers proceed while a run record is written; NORMAL sync is durable in WAL.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
