"""``flowserve runs list|show|tail``: the run history of the local database (the one a server
on the same machine writes, or any that ``--database-url`` names)."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from typing import Any

import anyio
import typer
from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

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
from flowserve.store.database import utcnow
from flowserve.store.runs import (
    CANCELLED,
    COMPLETED,
    FAILED,
    RUNNING,
    STATES,
    TIMESTAMP_HINT,
    RunFilters,
    RunSummary,
    parse_timestamp,
    summarize,
    timings,
    usage_total,
)

app = typer.Typer(help="Run history (in the local database).", no_args_is_help=True)

STYLES = {RUNNING: "yellow", COMPLETED: "green", FAILED: "red", CANCELLED: "magenta"}
_AGO = re.compile(r"([0-9]{1,6})([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# How far back a follower looks on each poll, beyond the recording delay and its interval:
# for the commit of a record and the clocks of two processes to agree.
_TAIL_SLACK = 10.0


def _state_option(state: str | None) -> str | None:
    if state is None:
        return None
    if state.upper() not in STATES:
        raise typer.BadParameter(f"must be one of {', '.join(STATES)}", param_hint="--state")
    return state.upper()


def _time_option(text: str | None, option: str) -> datetime | None:
    """An RFC 3339 time, or an age like 30s, 15m, 2h, 7d (that long ago)."""
    if text is None:
        return None
    ago = _AGO.fullmatch(text)
    if ago is not None:
        return utcnow() - timedelta(**{_UNITS[ago[2]]: int(ago[1])})
    try:
        return parse_timestamp(text)
    except ValueError:
        hint = f"expected {TIMESTAMP_HINT}, or an age like 30s, 15m, 2h, 7d"
        raise typer.BadParameter(hint, param_hint=option) from None


def _styled(state: str) -> Text:
    return Text(state, style=STYLES.get(state, ""))


def _at(t: datetime | None) -> str:
    return "" if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def _tokens(usage: dict[str, Any]) -> str:
    total = usage_total(usage)["total_tokens"]
    return str(total) if total else ""


@app.command("list")
def list_(
    flow: str = typer.Option(None, "--flow", help="only this flow's runs"),
    state: str = typer.Option(None, "--state", help="RUNNING, COMPLETED, FAILED or CANCELLED"),
    user: str = typer.Option(None, "--user", help="only runs with this user_id"),
    since: str = typer.Option(None, help="created at or after: a time with offset, or 15m, 2h"),
    until: str = typer.Option(None, help="created before: a time with offset, or 15m, 2h"),
    limit: int = typer.Option(20, min=1, max=500, help="at most this many"),
    org: str = OrgOption,
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """The latest runs, newest first."""
    filters = RunFilters(
        flow,
        _state_option(state),
        user,
        _time_option(since, "--since"),
        _time_option(until, "--until"),
    )
    settings = settings_from(config, database_url)

    async def go() -> list[RunSummary]:
        async with local_state(settings) as services:
            return await services.runs.store.list(org, filters, limit)

    runs = run_async(go)
    if not runs:
        err_console.print("no runs")
        return
    table = Table(
        Column("run", no_wrap=True, min_width=32),  # whole: it is what `runs show` takes
        Column("flow", overflow="fold"),
        Column("state", no_wrap=True, min_width=9),
        Column("user", overflow="fold"),
        Column("created (UTC)", overflow="fold"),
        Column("first token ms", justify="right"),
        Column("total ms", justify="right"),
        Column("tokens", justify="right"),
    )
    for run in runs:
        times = timings(run)
        table.add_row(
            Text(run.id),
            Text(f"{run.flow_id}@{run.flow_version}"),
            _styled(run.state),
            Text(run.user_id or ""),
            _at(run.queued_at),
            _ms(times["first_token_ms"]),
            _ms(times["total_ms"]),
            _tokens(run.usage),
        )
    _print_whole(table)


def _print_whole(table: Table) -> None:
    """A terminal's width is kept; a pipe gets the table as wide as it needs, nothing cut."""
    if console.is_terminal:
        console.print(table)
        return
    wide = console.options.update_width(10_000)
    width = max(console.width, Measurement.get(console, wide, table).maximum)
    Console(width=width, soft_wrap=True).print(table)


@app.command()
def show(
    run_id: str,
    org: str = OrgOption,
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """One run: how it ended, its timings and usage per node, its inputs and outputs."""
    settings = settings_from(config, database_url)

    async def go() -> Any:
        async with local_state(settings) as services:
            return await services.runs.store.get(org, run_id)

    row = run_async(go)
    run = summarize(row)
    times = timings(run)
    total = usage_total(run.usage)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    for name, value in (
        ("run", Text(run.id)),
        ("flow", Text(f"{run.flow_id}@{run.flow_version}")),
        ("state", _styled(run.state)),
        ("user", Text(run.user_id or "")),
        ("created", Text(f"{_at(run.queued_at)} UTC")),
        ("finished", Text(f"{_at(run.finished_at)} UTC" if run.finished_at else "")),
        ("queued ms", Text(_ms(times["queued_ms"]))),
        ("first token ms", Text(_ms(times["first_token_ms"]))),
        ("total ms", Text(_ms(times["total_ms"]))),
        (
            "tokens",
            Text(f"{total['prompt_tokens']} prompt + {total['completion_tokens']} completion"),
        ),
    ):
        facts.add_row(name, value)
    if row.error is not None or row.error_type is not None:
        where = f" at {row.error_node}" if row.error_node else ""
        facts.add_row("error", Text(f"{row.error_type}{where}: {row.error}", style="red"))
    nodes = Table(
        Column("node", no_wrap=True),
        "state",
        Column("started ms", justify="right"),
        Column("duration ms", justify="right"),
        Column("prompt tokens", justify="right"),
        Column("completion tokens", justify="right"),
        title="nodes",
        title_justify="left",
    )
    for node_id, timing in sorted((row.nodes or {}).items(), key=lambda kv: kv[1]["started_ms"]):
        counts = run.usage.get(node_id) or {}
        nodes.add_row(
            Text(node_id),
            _styled(str(timing.get("state"))),
            _ms(timing.get("started_ms")),
            _ms(timing.get("duration_ms")),
            str(counts.get("prompt_tokens") or ""),
            str(counts.get("completion_tokens") or ""),
        )
    values = Table(Column("", no_wrap=True), "value", title="inputs and outputs", show_lines=True)
    for name, value in (*row.inputs.items(), *(row.outputs or {}).items()):
        values.add_row(Text(name), Text(str(value)))
    console.print(Group(facts, "", nodes, "", values))


def _event(run: RunSummary) -> Text:
    times = timings(run)
    line = Text(utcnow().strftime("%H:%M:%S") + "  ")
    line.append(run.id)
    line.append(f"  {run.flow_id}@{run.flow_version}  ")
    line.append(f"{run.state:<9}", style=STYLES.get(run.state, ""))
    if run.user_id:
        line.append(f"  user {run.user_id}")
    if times["total_ms"] is not None:
        line.append(f"  {_ms(times['total_ms'])} ms")
    tokens = _tokens(run.usage)
    if tokens:
        line.append(f"  {tokens} tokens")
    if run.error_type:
        line.append(f"  {run.error_type}", style="red")
    return line


@app.command()
def tail(
    flow: str = typer.Option(None, "--flow", help="only this flow's runs"),
    interval: float = typer.Option(0.5, min=0.05, max=60, help="seconds between looks"),
    count: int = typer.Option(None, min=1, help="stop after this many lines"),
    timeout: float = typer.Option(None, min=0, help="stop after this many seconds"),
    org: str = OrgOption,
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """Follow runs as they are recorded: one line when a run appears, one when its state
    changes (RUNNING, then COMPLETED, FAILED or CANCELLED), until Ctrl-C."""
    settings = settings_from(config, database_url)
    # A run is recorded RUNNING once it has lasted record_delay, a shorter one only when it
    # ends: each look goes back that far, plus the time since the last look.
    back = timedelta(seconds=settings.record_delay + interval + _TAIL_SLACK)

    async def go() -> None:
        async with local_state(settings) as services:
            store = services.runs.store
            # run id -> (state, queued_at) of the runs seen, to tell what changed
            seen: dict[str, tuple[str, datetime]] = {}
            for run in await store.changed(org, flow, utcnow() - back):
                seen[run.id] = (run.state, run.queued_at)
            deadline = None if timeout is None else time.monotonic() + timeout
            err_console.print(f"following the runs of {org!r} (Ctrl-C to stop)")
            printed = 0
            while deadline is None or time.monotonic() < deadline:
                horizon = utcnow() - back
                watched = [run_id for run_id, (state, _) in seen.items() if state == RUNNING]
                for run in await store.changed(org, flow, horizon, watched):
                    before = seen.get(run.id)
                    seen[run.id] = (run.state, run.queued_at)
                    if before is not None and before[0] == run.state:
                        continue
                    console.print(_event(run))
                    printed += 1
                    if count is not None and printed >= count:
                        return
                for run_id, (state, queued_at) in list(seen.items()):  # out of sight now
                    if state != RUNNING and queued_at < horizon:
                        del seen[run_id]
                pause = interval
                if deadline is not None:
                    pause = max(0.0, min(pause, deadline - time.monotonic()))
                await anyio.sleep(pause)

    try:
        run_async(go)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
