"""The database schema's version, and bringing it to the one this code needs (Alembic).

Three states a server can find at start:

- **empty** (a new SQLite file, a new PostgreSQL database): the schema is created at once, as
  before migrations existed; there is nothing to lose;
- **at head**: nothing to do;
- **behind** (made by an older flowserve, with or without Alembic's ``alembic_version``) or
  **ahead** (a newer flowserve migrated it): ``flowserve serve`` refuses to start and names the
  command, ``flowserve db upgrade``, unless it is given ``--upgrade``. An upgrade is an
  operator's decision: other processes may still be running the older code.

A database made before migrations (its tables, no ``alembic_version``) is taken to be at the
first revision and upgraded from there; the revisions after it add only what is missing.
On PostgreSQL an upgrade holds an advisory lock, so processes started together migrate once.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from flowserve.errors import SchemaError
from flowserve.store.database import Database

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported when the schema is looked at (once, at start), not with this module:
# it and what it pulls in (its autogenerate, SQLAlchemy's DDL) cost ~10 MB a process keeps.

BASELINE = "0001"  # the schema of databases made before migrations
_LOCK = 0x666C6F77  # "flow": the advisory lock key of schema upgrades on PostgreSQL


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("flowserve.store") / "migrations"))
    config.attributes["connection"] = connection
    return config


# The newest revision in migrations/versions: what this code needs. Kept here so that a
# server whose database is up to date (every start but the first after an upgrade) checks it
# with one query and never loads Alembic; tests/test_migrations.py checks that it is
# Alembic's head.
HEAD = "0007"


def head() -> str:
    """The revision this code needs."""
    return HEAD


def alembic_head() -> str:
    """The head of the migration scripts, as Alembic reads them."""
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    current: str | None  # None: no alembic_version (empty, or made before migrations)
    head: str
    empty: bool  # no table at all

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def known(self) -> bool:
        """Whether this code knows the database's revision (False: a newer flowserve's)."""
        if self.current is None:
            return True
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(_config())
        return any(rev.revision == self.current for rev in script.walk_revisions())

    def describe(self) -> str:
        if self.empty:
            return "empty"
        if self.current is None:
            return "made before migrations (baseline 0001)"
        return self.current


def _status(connection: Connection) -> SchemaStatus:
    tables = inspect(connection).get_table_names()
    current = None
    if "alembic_version" in tables:  # what Alembic's MigrationContext reads, in one query
        current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return SchemaStatus(current=current, head=HEAD, empty=not tables)


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
    status = _status(connection)  # again, under the lock: another process may have done it
    if not status.known:
        raise SchemaError(_ahead(status))
    from alembic import command

    config = _config(connection)
    if status.current is None and not status.empty:
        command.stamp(config, BASELINE)
    command.upgrade(config, "head")


def _ahead(status: SchemaStatus) -> str:
    return (
        f"the database is at revision {status.current}, which this flowserve does not know "
        f"(it needs {status.head}): a newer flowserve has migrated it; run that version"
    )


async def status(db: Database) -> SchemaStatus:
    async with db.engine.connect() as conn:
        return await conn.run_sync(_status)


async def upgrade(db: Database) -> tuple[SchemaStatus, SchemaStatus]:
    """Bring the schema to head; the status before and after."""
    before = await status(db)
    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade)
    return before, await status(db)


async def prepare(db: Database, *, allow_upgrade: bool) -> None:
    """At start: create an empty database's schema; upgrade one that is behind only if
    allowed; otherwise raise SchemaError naming the command."""
    found = await status(db)
    if found.up_to_date:
        return
    if not found.known:
        raise SchemaError(_ahead(found))
    if found.empty or allow_upgrade:
        await upgrade(db)
        return
    raise SchemaError(
        f"the database schema is behind (at {found.describe()}, this flowserve needs "
        f"{found.head}): run `flowserve db upgrade` first (back it up before), or start "
        "with `flowserve serve --upgrade`"
    )
