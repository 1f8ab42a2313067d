"""The SQLite driver under SQLAlchemy's aiosqlite dialect: a recent SQLite with sqlite-vec.

Where ``pysqlite3`` (the ``pysqlite3-binary`` wheel: SQLite 3.51, built with extension
loading) is installed, aiosqlite's connections are made by it instead of the standard
library's ``sqlite3``, and each one loads ``sqlite-vec``, whose ``vec_distance_cosine`` ranks
chunk vectors inside the database (flowserve.knowledge.vectors). Python's own ``sqlite3`` is
often built without ``enable_load_extension`` (pyenv's is, here) and carries an older SQLite;
the same FTS5 query over 100k chunks took p50 82 ms on 3.51 against 112 ms on this Python's
3.40 (a one-off comparison in raw SQL, not part of bench/).

Each connection also loads ``flowrank`` where it was built (``flowrank.c`` beside this
module, an optional C extension of the package): an FTS5 rank function that flowserve's
keyword search uses instead of ``bm25()``, with the same scores (flowserve.knowledge.fts5).

Without the wheels (a platform they are not built for) the standard module is used and
vectors are scored in numpy, and without flowrank keyword search ranks with ``bm25()``: the
same results, found the slower way.

SQLAlchemy takes the driver as ``create_async_engine(..., module=...)``. Its adapter reads
the exception classes from aiosqlite, which re-exports the standard module's; here they come
from pysqlite3, whose errors are distinct classes, so that an IntegrityError is still one.
"""

from __future__ import annotations

import importlib.machinery
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from threading import Thread
from typing import Any, NamedTuple

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi

_ERRORS = (
    "DatabaseError",
    "Error",
    "IntegrityError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "sqlite_version",
    "sqlite_version_info",
)


Loader = Callable[[Any], None]  # loads one extension into a connection


class _Driver(AsyncAdapt_aiosqlite_dbapi):
    """aiosqlite over ``sqlite`` (pysqlite3's dbapi2), each connection given the extensions
    that ``loaders`` load."""

    def __init__(self, sqlite: Any, loaders: Sequence[Loader]) -> None:
        self.loaders = tuple(loaders)
        super().__init__(aiosqlite, sqlite)

    def _init_dbapi_attributes(self) -> None:
        super()._init_dbapi_attributes()
        for name in _ERRORS:
            setattr(self, name, getattr(self.sqlite, name))

    def connect(self, *arg: Any, **kw: Any) -> Any:
        sqlite, loaders = self.sqlite, self.loaders

        def connector() -> Any:
            conn = sqlite.connect(*arg, **kw)
            if loaders:
                conn.enable_load_extension(True)
                try:
                    for load in loaders:
                        load(conn)
                finally:
                    conn.enable_load_extension(False)
            return conn

        # aiosqlite's own connect() would call the standard sqlite3.connect: build the same
        # Connection (a thread owning one sqlite connection) around this connector.
        return super().connect(*arg, async_creator_fn=lambda *_a, **_k: _threaded(connector))


def _threaded(connector: Any) -> aiosqlite.Connection:
    connection = aiosqlite.Connection(connector, 64)
    # as SQLAlchemy does: a leaked connection's thread never blocks exit (before aiosqlite
    # 0.22 the Connection was the thread)
    thread = connection if isinstance(connection, Thread) else connection._thread
    thread.daemon = True
    return connection


def module() -> Any:
    """The DB-API module the engine's SQLite connections come from. Anything else that
    opens the database in this process must use it too: two copies of SQLite in one process
    do not see each other's locks (POSIX locks are per process, and each copy tracks its own)."""
    try:
        from pysqlite3 import dbapi2 as sqlite
    except ImportError:
        import sqlite3 as sqlite
    return sqlite


def flowrank_path() -> Path | None:
    """The built flowrank extension beside this module, if the install built it."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_flowrank{suffix}"
        if path.is_file():
            return path
    return None


def _flowrank_loader() -> Loader | None:
    path = flowrank_path()
    if path is None:
        return None
    # SQLite finds the entry point, sqlite3_flowrank_init, by the file's name
    return lambda conn: conn.load_extension(str(path))


def _vec_loader() -> Loader | None:
    try:
        import sqlite_vec
    except ImportError:
        return None
    return sqlite_vec.load


class Features(NamedTuple):
    """What the SQLite connections can do beyond SQL."""

    vectors: bool  # sqlite-vec's vec_distance_cosine
    flowrank: bool  # the flowrank FTS5 rank function


@cache
def driver() -> tuple[Any, Features]:
    """(the ``module=`` for SQLAlchemy or None for its default, what its connections can
    do). Each extension is tried once here, on a throwaway connection, so that a build whose
    extension will not load degrades to the slower path instead of failing every
    connection."""
    sqlite = module()
    if sqlite.__name__ == "sqlite3":
        return None, Features(False, False)
    found = (("vec", _vec_loader()), ("rank", _flowrank_loader()))
    loaded = {name: load for name, load in found if load is not None}
    for name, load in list(loaded.items()):
        probe = sqlite.connect(":memory:")
        try:
            probe.enable_load_extension(True)
            load(probe)
        except (AttributeError, sqlite.Error):
            del loaded[name]
        finally:
            probe.close()
    return _Driver(sqlite, list(loaded.values())), Features("vec" in loaded, "rank" in loaded)
