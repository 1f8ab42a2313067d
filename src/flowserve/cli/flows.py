"""``flowserve flows publish|list|validate``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from flowserve.cli._context import (
    ConfigOption,
    DatabaseOption,
    OrgOption,
    console,
    err_console,
    local_state,
    report_invalid,
    run_async,
    settings_from,
)
from flowserve.errors import FlowValidationError

app = typer.Typer(help="Publish and list flows (in the local database).", no_args_is_help=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        err_console.print(f"[red]error:[/red] cannot read {path}: {exc.strerror}")
        raise typer.Exit(2) from None


def _report(exc: FlowValidationError, path: Path) -> None:
    report_invalid(exc, str(path))


@app.command()
def publish(
    path: Path,
    org: str = OrgOption,
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """Validate and publish a flow file; a changed flow gets a new version."""
    text = _read(path)
    settings = settings_from(config, database_url)

    async def go():
        async with local_state(settings) as state:
            return await state.flows.publish(org, text)

    stored, flow = run_async(go)
    for warning in flow.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {warning}")
    what = "published" if stored.created else "unchanged"
    console.print(f"{stored.flow_id}: version {stored.version} ({what})")


@app.command()
def validate(path: Path, config: str = ConfigOption) -> None:
    """Check a flow file without publishing it."""
    from flowserve.services import Services

    state = Services.build(settings_from(config, None))
    try:
        _, flow = state.flows.compile_text(_read(path))
    except FlowValidationError as exc:
        _report(exc, path)
        raise typer.Exit(1) from None
    for warning in flow.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"{flow.id}: valid ({len(flow.nodes)} nodes, {len(flow.outputs)} outputs)")


@app.command("list")
def list_(
    org: str = OrgOption, config: str = ConfigOption, database_url: str = DatabaseOption
) -> None:
    """List published flows with their latest version."""
    settings = settings_from(config, database_url)

    async def go():
        async with local_state(settings) as state:
            return await state.flows.store.list(org)

    table = Table("flow", "version", "published")
    for flow_id, version, at in run_async(go):
        table.add_row(flow_id, str(version), at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)
