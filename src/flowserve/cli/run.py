"""``flowserve run``: run a flow file (or a published flow) in this process and show the
outputs live as they stream."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import typer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel

from flowserve.auth import PRIVATE, Principal
from flowserve.cli._context import (
    ConfigOption,
    DatabaseOption,
    OrgOption,
    console,
    err_console,
    local_state,
    run_async,
    settings_from,
)
from flowserve.events import NodeDelta, RunFinished
from flowserve.flows.service import LoadedFlow
from flowserve.runs.run import Run


def _parse_inputs(pairs: list[str]) -> dict[str, str]:
    inputs: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--input")
        inputs[name] = value
    return inputs


def run(
    flow: str = typer.Argument(..., help="a flow file (.yaml/.yml/.json) or a published flow id"),
    input_: list[str] = typer.Option([], "--input", "-i", help="NAME=VALUE (repeatable)"),
    user_id: str = typer.Option(None, help="user id for conversation memory"),
    version: int = typer.Option(-1, help="published flow version (-1 = latest)"),
    as_json: bool = typer.Option(False, "--json", help="print only the final outputs as JSON"),
    org: str = OrgOption,
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """Run a flow here and print its outputs live."""
    inputs = _parse_inputs(input_)
    settings = settings_from(config, database_url, warm_up=False)
    path = Path(flow)
    is_file = path.suffix in (".yaml", ".yml", ".json") or path.exists()
    text = path.read_text(encoding="utf-8") if is_file else ""

    async def go() -> Run:
        async with local_state(settings) as state:
            if is_file:
                _, compiled = state.flows.compile_text(text)
                for warning in compiled.warnings:
                    err_console.print(f"[yellow]warning:[/yellow] {warning}")
                loaded = LoadedFlow(org, 0, compiled)
            else:
                loaded = await state.flows.get(org, flow, version)
            values = loaded.flow.resolve_inputs(inputs)
            principal = Principal(org_id=org, key_id="cli", kind=PRIVATE)
            async with state.runs.start(principal, loaded, values, user_id) as active:
                await _show(active, as_json)
            return active

    result = run_async(go)
    final = result.final
    if as_json:
        sys.stdout.write(orjson.dumps(result.outputs()).decode() + "\n")
    if final is None or final.state != "COMPLETED":
        err_console.print(
            f"[red]run {final.state if final else 'CANCELLED'}:[/red] "
            f"{final.error if final else 'cancelled'}"
        )
        raise typer.Exit(1)


async def _show(run: Run, as_json: bool) -> None:
    if as_json:
        async for _ in run.events():
            pass
        return
    if not console.is_terminal:
        # Plain output for pipes: stream the first output's text, then the others whole.
        first_out = next(iter(run.flow.outputs))
        source = run.flow.outputs[first_out]
        async for event in run.events():
            if type(event) is NodeDelta and event.node_id == source:
                sys.stdout.write(event.text)
                sys.stdout.flush()
        sys.stdout.write("\n")
        for out_id in list(run.flow.outputs)[1:]:
            sys.stdout.write(f"--- {out_id}\n{run.output_text(out_id)}\n")
        return

    def render() -> Group:
        return Group(*(Panel(run.output_text(o) or "…", title=o) for o in run.flow.outputs))

    with Live(render(), console=console, refresh_per_second=12) as live:
        async for event in run.events():
            if type(event) is NodeDelta or type(event) is RunFinished:
                live.update(render())
