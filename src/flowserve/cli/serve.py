"""``flowserve serve``, ``init`` (first run) and ``quickstart`` (init, then serve)."""

from __future__ import annotations

import hashlib
import shlex
from importlib.resources import files
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from flowserve.auth import PRIVATE, PUBLIC
from flowserve.cli._context import (
    ConfigOption,
    DatabaseOption,
    check_schema,
    console,
    err_console,
    local_state,
    run_async,
    settings_from,
)
from flowserve.config import Settings

if TYPE_CHECKING:
    from flowserve.services import Services

EXAMPLE_FLOW = "support-bot"
DOCS_FLOW = "ask-flowserve"  # the second example: answers from a KB holding the README
DOCS_KB = "flowserve docs"
_DOCS_KB_ID = "__FLOWSERVE_DOCS_KB__"  # in ask-flowserve.yaml, replaced by the KB's id


def example_flow_text(name: str = EXAMPLE_FLOW) -> str:
    return (files("flowserve") / "examples" / f"{name}.yaml").read_text(encoding="utf-8")


async def _docs_kb(state: Services, org: str) -> str:
    """The org's "flowserve docs" KB (made the first time) holding this package's README as
    installed (its long description: no copy to drift), indexed before this returns."""
    from importlib.metadata import metadata

    from flowserve.knowledge.params import CreateKnowledgeBase
    from flowserve.knowledge.upload import Received

    knowledge = state.knowledge
    kb_id = None
    cursor = None
    while kb_id is None:
        rows = await knowledge.store.list_kbs(org, cursor, True, 200)
        kb_id = next((row.id for row in rows if row.name == DOCS_KB), None)
        if len(rows) < 200:
            break
        cursor = (rows[-1].created_at, rows[-1].id)
    if kb_id is None:
        body = CreateKnowledgeBase(name=DOCS_KB, description="flowserve's README (init)")
        kb_id = str((await knowledge.create(org, body))["knowledge_base_id"])
    readme = (metadata("flowserve")["Description"] or "# flowserve\n").encode()
    temp = knowledge.blobs.new_temp()
    temp.write_bytes(readme)
    received = Received(temp, len(readme), hashlib.sha256(readme).hexdigest(), "README.md")
    file_id, _ = await knowledge.upload(org, kb_id, received)  # same bytes: nothing changes
    await knowledge.ingest.index_file(file_id)  # a no-op once indexed
    return kb_id


MAX_WORKERS = 64


def _serve(settings: Settings, workers: int = 1) -> None:
    from flowserve.logs import configure_logging

    configure_logging(settings)
    if workers > 1:
        from flowserve.errors import ConfigError
        from flowserve.http.workers import Supervisor

        try:
            code = Supervisor(settings, workers).run()
        except ConfigError as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
        if code:
            raise typer.Exit(code)
        return
    from flowserve.http.server import serve as run_server

    if not run_server(settings):
        raise typer.Exit(3)  # as uvicorn.run: the application failed to start


def check_workers(settings: Settings, workers: int) -> None:
    """Several processes need Redis to share what one process alone keeps (README, "Behind
    a load balancer"): refuse them without it, naming the setting."""
    if workers > 1 and not settings.redis_url:
        err_console.print(
            f"[red]error:[/red] --workers {workers} needs Redis: set redis_url "
            "(FLOWSERVE_REDIS_URL, e.g. redis://127.0.0.1:6379/0). Without it each worker "
            "knows only its own runs: a stream resumed (last-event-id) or a run stopped on "
            "another worker is not found, and the rate and concurrency limits count per "
            "worker.",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(2)


def serve(
    host: str = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default 8000)"),
    workers: int = typer.Option(
        1,
        min=1,
        max=MAX_WORKERS,
        help="server processes on this port (more than 1 needs redis_url)",
    ),
    upgrade: bool = typer.Option(
        False, "--upgrade", help="migrate a database made by an older flowserve first"
    ),
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """Serve the HTTP API."""
    settings = settings_from(
        config, database_url, host=host, port=port, upgrade_schema=upgrade or None
    )
    check_workers(settings, workers)
    check_schema(settings)  # a clear message, before uvicorn starts
    _serve(settings, workers)


def _init(settings: Settings, org: str) -> tuple[dict[str, str], int]:
    """Create the database, the org, its keys (first time only) and the example flow."""

    async def go() -> tuple[dict[str, str], int]:
        async with local_state(settings) as state:
            created: dict[str, str] = {}
            if not await state.keys.org_exists(org):
                await state.keys.create_org(org)
                # The public key may be used from this server's own pages (and, like every
                # key, from servers and curl, which send no Origin).
                _, origin = page_url(settings, org)
                for kind, origins in ((PUBLIC, [origin]), (PRIVATE, None)):
                    key = await state.keys.create_key(
                        org, kind, name=f"{kind} (init)", allowed_origins=origins
                    )
                    created[kind] = key.token
            stored, _ = await state.flows.publish(org, example_flow_text())
            docs = example_flow_text(DOCS_FLOW).replace(_DOCS_KB_ID, await _docs_kb(state, org))
            await state.flows.publish(org, docs)
            return created, stored.version

    return run_async(go)


def _print_keys(created: dict[str, str], org: str) -> None:
    if created:
        console.print("[bold]API keys[/bold] (shown once; store them now):")
        console.print(f"  public  (browser, may run flows): {created[PUBLIC]}")
        console.print(f"  private (may publish flows, read runs): {created[PRIVATE]}")
    else:
        console.print(
            f"Organisation {org!r} already exists; its keys were printed when it was created. "
            "New ones: flowserve keys create --kind public"
        )


def curl_command(settings: Settings, org: str, key: str | None) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{host}:{settings.port}/stream_exported_flow?flow_id={EXAMPLE_FLOW}&org={org}"
    auth = f"Authorization: Bearer {key}" if key else "Authorization: Bearer $FLOWSERVE_KEY"
    body = '{"in-0": "How do I reset my password?", "user_id": "demo-user"}'
    return (
        f"curl -N -X POST {shlex.quote(url)} -H {shlex.quote(auth)} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )


def docs_curl_command(settings: Settings, org: str, key: str | None) -> str:
    """A question to the second example, whose v0 envelope carries its citations."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{host}:{settings.port}/inference/v0/run/{org}/{DOCS_FLOW}"
    auth = f"Authorization: Bearer {key}" if key else "Authorization: Bearer $FLOWSERVE_KEY"
    body = '{"in-0": "How do I publish a flow?"}'
    return (
        f"curl -X POST {shlex.quote(url)} -H {shlex.quote(auth)} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )


def page_url(settings: Settings, org: str) -> tuple[str, str]:
    """The example flow's form page, and the origin a key must allow to be used from it."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    origin = f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"
    return f"{origin}/ui/{org}/{EXAMPLE_FLOW}", origin


def init(
    org: str = typer.Option("default", help="organisation id"),
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """First run: create the database, an organisation with a public and a private key, and
    publish the example flow on the embedded model."""
    settings = settings_from(config, database_url)
    created, version = _init(settings, org)
    _print_keys(created, org)
    console.print(f"Published flow {EXAMPLE_FLOW!r} version {version} in org {org!r}.")
    console.print(f"Published flow {DOCS_FLOW!r}: questions about flowserve, from its README.")


def quickstart(
    org: str = typer.Option("default", help="organisation id"),
    host: str = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default 8000)"),
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """init, then serve: prints the keys and a curl command that streams from the server."""
    settings = settings_from(config, database_url, host=host, port=port)
    created, version = _init(settings, org)
    _print_keys(created, org)
    console.print(f"Published flow {EXAMPLE_FLOW!r} version {version} in org {org!r}.")
    console.print(f"Published flow {DOCS_FLOW!r}: questions about flowserve, from its README.")
    console.print("\n[bold]Stream from it[/bold] (once the server below is up):")
    console.print(curl_command(settings, org, created.get(PUBLIC)), soft_wrap=True)
    console.print("\n[bold]Ask about flowserve[/bold] (the answer cites the README):")
    console.print(docs_curl_command(settings, org, created.get(PUBLIC)), soft_wrap=True)
    page, origin = page_url(settings, org)
    if PUBLIC in created:  # the key just made allows this origin: the page works as printed
        fragment = f"#key={created[PUBLIC]}"
        console.print("\n[bold]Open its pages[/bold] (form, chat):", soft_wrap=True)
        console.print(f"  {page}{fragment}\n  {page}/chat{fragment}", soft_wrap=True)
    else:
        console.print(f"\n[bold]Its pages[/bold]: {page} (form) and {page}/chat", soft_wrap=True)
        console.print(
            "  with a public key that allows this origin, given after #key= in the address:\n"
            f"  flowserve keys create --kind public --origin {origin}",
            soft_wrap=True,
            highlight=False,
        )
    console.print("")
    _serve(settings)
