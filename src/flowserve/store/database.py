"""Engine and sessions. The schema is Alembic's (``flowserve.store.schema``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from flowserve.store import sqlite_driver


def utcnow() -> datetime:
    return datetime.now(UTC)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        # whether SQL can rank vectors (sqlite-vec's vec_distance_cosine; sqlite_driver)
        self.vector_functions = False
        # whether FTS5 can rank with flowrank (flowserve.knowledge.fts5; sqlite_driver)
        self.rank_function = False
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
            # the connection handed back last is taken first: a keyword search of a large KB
            # holds one and takes a second (flowserve.knowledge.fts5), and with the pool's
            # default order the two swapped roles each search, every other one ~40% slower
            # (measured at 100k chunks; each SQLite connection has its own page cache)
            kwargs["pool_use_lifo"] = True
            module, features = sqlite_driver.driver()
            self.vector_functions, self.rank_function = features
            if module is not None:
                kwargs["module"] = module
        else:
            # A server (PostgreSQL) may restart or drop idle connections: each one is
            # checked as it leaves the pool, and a dead one replaced, so the next request
            # after a restart succeeds instead of failing on a closed connection.
            kwargs["pool_pre_ping"] = True
        self.engine = create_async_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def create_schema(self) -> None:
        """Create the schema, or bring it up to date: Alembic's migrations to head (see
        ``flowserve.store.schema``; a server at start calls ``schema.prepare`` instead)."""
        from flowserve.store import schema  # it imports this module

        await schema.upgrade(self)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session, session.begin():
            yield session

    async def aclose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers proceed while a run record is written; NORMAL sync is durable in WAL.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
