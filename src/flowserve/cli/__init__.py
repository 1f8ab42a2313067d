"""The ``flowserve`` command line, one module per noun."""

from __future__ import annotations

import typer

from flowserve.cli import db, flows, kb, keys, run, runs, serve

app = typer.Typer(
    name="flowserve",
    help="Run LLM flows and stream their outputs over a Stack AI-compatible HTTP API.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("serve")(serve.serve)
app.command("init")(serve.init)
app.command("quickstart")(serve.quickstart)
app.command("run")(run.run)
app.add_typer(flows.app, name="flows")
app.add_typer(keys.app, name="keys")
app.add_typer(runs.app, name="runs")
app.add_typer(db.app, name="db")
app.add_typer(kb.app, name="kb")


def main() -> None:
    app()
