"""``flowserve serve``, ``init`` (first run) and ``quickstart`` (init, then serve)."""

from __future__ import annotations

import shlex
from importlib.resources import files

import typer

from flowserve.auth import PRIVATE, PUBLIC
from flowserve.cli._context import (
    ConfigOption,
    DatabaseOption,
    check_schema,
    console,
    local_state,
    run_async,
    settings_from,
)
from flowserve.config import Settings

EXAMPLE_FLOW = "support-bot"


def example_flow_text() -> str:
    return (files("flowserve") / "examples" / f"{EXAMPLE_FLOW}.yaml").read_text(encoding="utf-8")


def _serve(settings: Settings) -> None:
    import uvicorn

    from flowserve.http.app import create_app
    from flowserve.http.server import GRACE, DrainingServer, protocol_class
    from flowserve.logs import configure_logging

    configure_logging(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol_class(settings.header_timeout),  # httptools, with a header timeout
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACE,  # after the drain (settings.drain_seconds)
    )
    server = DrainingServer(config, settings.drain_seconds)
    server.run()
    if not server.started:
        raise typer.Exit(3)  # as uvicorn.run: the application failed to start


def serve(
    host: str = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default 8000)"),
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
    check_schema(settings)  # a clear message, before uvicorn starts
    _serve(settings)


def _init(settings: Settings, org: str) -> tuple[dict[str, str], int]:
    """Create the database, the org, its keys (first time only) and the example flow."""

    async def go() -> tuple[dict[str, str], int]:
        async with local_state(settings) as state:
            created: dict[str, str] = {}
            if not await state.keys.org_exists(org):
                await state.keys.create_org(org)
                for kind in (PUBLIC, PRIVATE):
                    key = await state.keys.create_key(org, kind, name=f"{kind} (init)")
                    created[kind] = key.token
            stored, _ = await state.flows.publish(org, example_flow_text())
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
    console.print("\n[bold]Stream from it[/bold] (once the server below is up):")
    console.print(curl_command(settings, org, created.get(PUBLIC)), soft_wrap=True)
    page, origin = page_url(settings, org)
    console.print(f"\n[bold]Its pages[/bold]: {page} (form) and {page}/chat", soft_wrap=True)
    console.print(
        "  with a public key that allows this origin, given after #key= in the address:\n"
        f"  flowserve keys create --kind public --origin {origin}",
        soft_wrap=True,
        highlight=False,
    )
    console.print("")
    _serve(settings)
