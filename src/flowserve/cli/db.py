"""``flowserve db upgrade|current``: the database schema's migrations (Alembic)."""

from __future__ import annotations

import typer

from flowserve.cli._context import ConfigOption, DatabaseOption, console, run_async, settings_from
from flowserve.store import schema
from flowserve.store.database import Database

app = typer.Typer(help="The database schema: its revision, and migrating it.", no_args_is_help=True)


@app.command()
def current(config: str = ConfigOption, database_url: str = DatabaseOption) -> None:
    """Print the database's schema revision and the one this flowserve needs; exit 1 if
    they differ."""
    settings = settings_from(config, database_url)

    async def go() -> schema.SchemaStatus:
        db = Database(settings.database_url)
        try:
            return await schema.status(db)
        finally:
            await db.aclose()

    found = run_async(go)
    verdict = "up to date" if found.up_to_date else "behind" if found.known else "ahead"
    console.print(f"database: {found.describe()}  needed: {found.head}  ({verdict})")
    if not found.up_to_date:
        raise typer.Exit(1)


@app.command()
def upgrade(config: str = ConfigOption, database_url: str = DatabaseOption) -> None:
    """Migrate the database to the schema this flowserve needs (back it up first). Safe to
    run twice, and from several processes at once on PostgreSQL."""
    settings = settings_from(config, database_url)

    async def go() -> tuple[schema.SchemaStatus, schema.SchemaStatus]:
        db = Database(settings.database_url)
        try:
            return await schema.upgrade(db)
        finally:
            await db.aclose()

    before, after = run_async(go)
    if before.up_to_date:
        console.print(f"already at {after.head}; nothing to do")
    else:
        console.print(f"upgraded from {before.describe()} to {after.current}")
