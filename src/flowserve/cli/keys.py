"""``flowserve keys create|list|revoke`` and ``flowserve keys org`` (create an organisation)."""

from __future__ import annotations

import typer
from rich.table import Column, Table

from flowserve.auth import PRIVATE, PUBLIC
from flowserve.cli._context import (
    ConfigOption,
    DatabaseOption,
    OrgOption,
    console,
    local_state,
    run_async,
    settings_from,
)

app = typer.Typer(help="Manage API keys (in the local database).", no_args_is_help=True)


@app.command()
def create(
    kind: str = typer.Option(PUBLIC, help="public (browser: run flows) or private"),
    org: str = OrgOption,
    name: str = typer.Option("", help="a label for the key"),
    origin: list[str] = typer.Option([], help="allowed browser origin (repeatable; '*' = any)"),
    rate_limit: int = typer.Option(
        None, "--rate-limit", min=0, help="requests per minute (default: the server's; 0 = none)"
    ),
    create_org: bool = typer.Option(False, "--create-org", help="create the org if missing"),
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """Create a key. It is printed once: only its hash is stored."""
    if kind not in (PUBLIC, PRIVATE):
        raise typer.BadParameter("must be 'public' or 'private'", param_hint="--kind")
    settings = settings_from(config, database_url)

    async def go() -> str:
        async with local_state(settings) as state:
            if create_org:
                await state.keys.create_org(org)
            key = await state.keys.create_key(org, kind, name, list(origin), rate_limit)
            return key.token

    token = run_async(go)
    console.print(token)


@app.command("list")
def list_(
    org: str = OrgOption, config: str = ConfigOption, database_url: str = DatabaseOption
) -> None:
    """List keys (ids only: secrets are never stored)."""
    settings = settings_from(config, database_url)

    async def go():
        async with local_state(settings) as state:
            return await state.keys.list_keys(org)

    columns = ("kind", "name", "created", "revoked", "origins", "rate/min")
    table = Table(Column("id", no_wrap=True), *columns)
    for k in run_async(go):
        table.add_row(
            k.key_id,
            k.kind,
            k.name,
            k.created_at.strftime("%Y-%m-%d %H:%M"),
            "yes" if k.revoked else "",
            ",".join(k.allowed_origins),
            "" if k.rate_limit_per_minute is None else str(k.rate_limit_per_minute),
        )
    console.print(table)


@app.command()
def revoke(key_id: str, config: str = ConfigOption, database_url: str = DatabaseOption) -> None:
    """Revoke a key by its id (the part after fs-pub-/fs-priv-). With Redis
    (FLOWSERVE_REDIS_URL), every server refuses it at once."""
    settings = settings_from(config, database_url)

    async def go() -> None:
        async with local_state(settings) as state:
            await state.revoke_key(key_id)

    run_async(go)
    console.print(f"revoked {key_id}")
