"""Shared by the commands: settings, and the services over the local database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from flowserve.config import Settings
from flowserve.errors import FlowserveError, FlowValidationError
from flowserve.services import Services
from flowserve.store import schema

T = TypeVar("T")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config file (or FLOWSERVE_CONFIG)")
DatabaseOption = typer.Option(None, "--database-url", help="overrides FLOWSERVE_DATABASE_URL")
OrgOption = typer.Option("default", "--org", help="organisation id")


def settings_from(config: str | None, database_url: str | None, **extra: Any) -> Settings:
    try:
        return Settings.load(config, database_url=database_url, **extra)
    except FlowserveError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@asynccontextmanager
async def local_state(settings: Settings) -> AsyncIterator[Services]:
    state = Services.build(settings)
    try:
        await schema.prepare(state.db, allow_upgrade=settings.upgrade_schema)
    except BaseException:
        await state.aclose()
        raise
    try:
        # Registered like a server, so that a server sharing the database does not take
        # this process's runs (``flowserve run``) for orphans. With Redis, connected to send
        # (a revoked key is dropped from every server's cache at once), not to listen.
        async with state.instances.alive():
            await state.start_cluster(None)
            yield state
    finally:
        await state.aclose()


def check_schema(settings: Settings) -> None:
    """Refuse (exit 2, naming ``flowserve db upgrade``) a database behind this code, unless
    ``settings.upgrade_schema``; create an empty one's schema."""
    from flowserve.store.database import Database

    async def go() -> None:
        db = Database(settings.database_url)
        try:
            await schema.prepare(db, allow_upgrade=settings.upgrade_schema)
        finally:
            await db.aclose()

    try:
        asyncio.run(go())
    except FlowserveError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; flowserve errors become a clean message and exit code 1."""
    try:
        return asyncio.run(fn())  # type: ignore[arg-type]
    except FlowValidationError as exc:
        report_invalid(exc)
        raise typer.Exit(1) from None
    except FlowserveError as exc:
        err_console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None


def report_invalid(exc: FlowValidationError, what: str = "the flow") -> None:
    err_console.print(f"[red]{what} is not valid:[/red]", soft_wrap=True)
    for loc, msg in exc.problems:
        err_console.print(f"  {loc}: {msg}", soft_wrap=True, markup=False)
