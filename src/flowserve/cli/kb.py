"""``flowserve kb create|list|show|update|delete|upload|files|download|rm|sync|search``:
knowledge bases in the local database, as the ``/v1/knowledge-bases`` routes serve them.

``upload`` and ``sync`` index in this process before they return (``--no-wait``: leave the
files pending for a running server to take over).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import typer
from rich.table import Column, Table

from flowserve.cli._context import (
    ConfigOption,
    DatabaseOption,
    OrgOption,
    console,
    local_state,
    run_async,
    settings_from,
)
from flowserve.errors import PayloadTooLargeError
from flowserve.knowledge.params import (
    ChunkerParams,
    CreateKnowledgeBase,
    IndexingParams,
    SearchRequest,
    UpdateKnowledgeBase,
)
from flowserve.knowledge.service import KnowledgeService, file_json
from flowserve.knowledge.store import decode_cursor
from flowserve.knowledge.upload import Received, clean_name, human

app = typer.Typer(help="Manage knowledge bases (in the local database).", no_args_is_help=True)
ChunkSize = typer.Option(None, "--chunk-size", min=1, help="characters per chunk (1500)")
ChunkOverlap = typer.Option(None, "--chunk-overlap", min=0, help="characters repeated (500)")
Chunker = typer.Option(None, "--chunker", help="sentence (default) or naive")


def _chunker(size: int | None, overlap: int | None, kind: str | None) -> dict[str, Any]:
    given = {"chunk_size": size, "chunk_overlap": overlap, "chunker_type": kind}
    return {k: v for k, v in given.items() if v is not None}


def _params(chunker: dict[str, Any]) -> IndexingParams:
    try:
        return IndexingParams(chunker_params=ChunkerParams(**chunker))
    except ValueError as exc:
        raise typer.BadParameter(str(exc).splitlines()[-1]) from None


def _receive(path: Path, knowledge: KnowledgeService) -> Received:
    """A local file copied into the storage directory's temp area, hashed on the way."""
    limit = knowledge.settings.kb_max_file_bytes
    if path.stat().st_size > limit:
        raise PayloadTooLargeError(f"file exceeds the {human(limit)} limit")
    temp = knowledge.blobs.new_temp()
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source, temp.open("wb") as target:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            target.write(chunk)
            size += len(chunk)
    return Received(temp, size, digest.hexdigest(), clean_name(path.name))


def _show(kb: dict[str, Any]) -> None:
    chunker = kb["indexing_params"]["chunker_params"]
    model = kb["indexing_params"]["embedding_params"]["embedding_model"]
    table = Table(Column("field", style="bold"), "value", show_header=False)
    for name, value in (
        ("id", kb["knowledge_base_id"]),
        ("name", kb["name"]),
        ("description", kb["description"]),
        ("files", f"{kb['total_files']} ({kb['total_indexed_files']} indexed, "
         f"{kb['total_error_files']} error), {kb['total_size']} bytes"),
        ("chunks", f"{chunker['chunker_type']}, {chunker['chunk_size']} characters, "
         f"overlap {chunker['chunk_overlap']}"),
        ("search", f"hybrid ({model})" if model else "keyword (full-text)"),
        ("created", kb["created_at"]),
        ("last synced", kb["last_synced_at"] or ""),
    ):  # fmt: skip
        table.add_row(name, str(value))
    console.print(table)


@app.command()
def create(
    name: str = typer.Option("Unnamed Knowledge Base", help="its name"),
    description: str = typer.Option("", help="what it holds"),
    chunk_size: int = ChunkSize,
    chunk_overlap: int = ChunkOverlap,
    chunker: str = Chunker,
    org: str = OrgOption,
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """Create a knowledge base; prints its id."""
    params = _params(_chunker(chunk_size, chunk_overlap, chunker))
    body = CreateKnowledgeBase(name=name, description=description, indexing_params=params)
    settings = settings_from(config, database_url)

    async def go() -> dict[str, Any]:
        async with local_state(settings) as state:
            return await state.knowledge.create(org, body)

    console.print(run_async(go)["knowledge_base_id"])


@app.command("list")
def list_(
    org: str = OrgOption, config: str = ConfigOption, database_url: str = DatabaseOption
) -> None:
    """List the org's knowledge bases, newest first."""
    settings = settings_from(config, database_url)

    async def go() -> list[dict[str, Any]]:
        async with local_state(settings) as state:
            found: list[dict[str, Any]] = []
            cursor = None
            while True:
                page, following = await state.knowledge.list_kbs(org, cursor, True, 1000)
                found += page
                if following is None:
                    return found
                cursor = decode_cursor(following)

    table = Table(Column("id", no_wrap=True), "name", "files", "indexed", "errors", "created")
    for kb in run_async(go):
        table.add_row(
            kb["knowledge_base_id"], kb["name"], str(kb["total_files"]),
            str(kb["total_indexed_files"]), str(kb["total_error_files"]), kb["created_at"][:16],
        )  # fmt: skip
    console.print(table)


@app.command()
def show(
    kb_id: str, org: str = OrgOption, config: str = ConfigOption, database_url: str = DatabaseOption
) -> None:
    """Show one knowledge base."""
    settings = settings_from(config, database_url)

    async def go() -> dict[str, Any]:
        async with local_state(settings) as state:
            return await state.knowledge.get(org, kb_id)

    _show(run_async(go))


@app.command()
def update(
    kb_id: str,
    name: str = typer.Option(None, help="a new name"),
    description: str = typer.Option(None, help="a new description"),
    chunk_size: int = ChunkSize,
    chunk_overlap: int = ChunkOverlap,
    chunker: str = Chunker,
    org: str = OrgOption,
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """Change a knowledge base; new chunking re-indexes its files (by a running server)."""
    fields: dict[str, Any] = {k: v for k, v in (("name", name), ("description", description)) if v}
    chunking = _chunker(chunk_size, chunk_overlap, chunker)
    if chunking:
        fields["indexing_params"] = {"chunker_params": chunking}
    try:
        body = UpdateKnowledgeBase.model_validate(fields, strict=False)
    except ValueError as exc:
        raise typer.BadParameter(str(exc).splitlines()[-1]) from None
    settings = settings_from(config, database_url)

    async def go() -> dict[str, Any]:
        async with local_state(settings) as state:
            return await state.knowledge.update(org, kb_id, body)

    _show(run_async(go))


@app.command()
def delete(
    kb_id: str, org: str = OrgOption, config: str = ConfigOption, database_url: str = DatabaseOption
) -> None:
    """Delete a knowledge base with its files."""
    settings = settings_from(config, database_url)

    async def go() -> None:
        async with local_state(settings) as state:
            await state.knowledge.delete(org, kb_id)

    run_async(go)
    console.print(f"deleted {kb_id}")


@app.command()
def upload(
    kb_id: str,
    paths: list[Path] = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="index before returning"),
    org: str = OrgOption,
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """Upload files (each checked as the HTTP route checks it) and index them."""
    settings = settings_from(config, database_url)

    async def go() -> list[dict[str, Any]]:
        async with local_state(settings) as state:
            knowledge = state.knowledge
            done = []
            for path in paths:
                received = _receive(path, knowledge)
                file_id, changed = await knowledge.upload(org, kb_id, received)
                if changed and wait:
                    await knowledge.ingest.index_file(file_id)
                done.append(file_json(await knowledge.file(org, kb_id, file_id)))
            return done

    for row in run_async(go):
        note = f" ({row['error']})" if row["error"] else ""
        console.print(f"{row['resource_id']}  {row['resource_path']}  {row['status']}{note}")


@app.command()
def files(
    kb_id: str, org: str = OrgOption, config: str = ConfigOption, database_url: str = DatabaseOption
) -> None:
    """List a knowledge base's files with their status, newest first."""
    settings = settings_from(config, database_url)

    async def go() -> list[dict[str, Any]]:
        async with local_state(settings) as state:
            found, _ = await state.knowledge.files(org, kb_id, None, True, 100_000)
            return found

    table = Table(Column("id", no_wrap=True), "name", "type", "bytes", "status", "error")
    for row in run_async(go):
        table.add_row(
            row["resource_id"], row["resource_path"], row["content_mime"], str(row["size"]),
            row["status"], row["error"] or "",
        )  # fmt: skip
    console.print(table)


@app.command()
def download(
    kb_id: str,
    resource_id: str,
    output: Path = typer.Option(None, "--output", "-o", help="default: its name, here"),
    org: str = OrgOption,
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """Write a file's original."""
    settings = settings_from(config, database_url)

    async def go() -> tuple[Path, str]:
        async with local_state(settings) as state:
            row = await state.knowledge.file(org, kb_id, resource_id)
            return state.knowledge.original(row), row.resource_path

    source, name = run_async(go)
    target = output or Path(name)
    shutil.copyfile(source, target)
    console.print(f"wrote {target}")


@app.command()
def rm(
    kb_id: str,
    resource_id: str,
    org: str = OrgOption,
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """Delete one file of a knowledge base."""
    settings = settings_from(config, database_url)

    async def go() -> None:
        async with local_state(settings) as state:
            await state.knowledge.delete_file(org, kb_id, resource_id)

    run_async(go)
    console.print(f"deleted {resource_id}")


@app.command()
def sync(
    kb_id: str,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="index before returning"),
    org: str = OrgOption,
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """Index again every file that is not indexed (errors are retried)."""
    settings = settings_from(config, database_url)

    async def go() -> dict[str, Any]:
        async with local_state(settings) as state:
            knowledge = state.knowledge
            await knowledge.sync(org, kb_id)
            if wait:
                for row in await knowledge.store.all_files(kb_id):
                    await knowledge.ingest.index_file(row.id)
            return await knowledge.get(org, kb_id)

    _show(run_async(go))


@app.command()
def search(
    kb_id: str,
    query: str,
    top_k: int = typer.Option(10, "--top-k", min=1, max=100, help="how many results"),
    output_format: str = typer.Option("chunks", "--format", help="chunks, pages or docs"),
    org: str = OrgOption,
    config: str = ConfigOption,
    database_url: str = DatabaseOption,
) -> None:
    """Search a knowledge base; the best results first."""
    try:
        body = SearchRequest.model_validate(
            {"query": query, "top_k": top_k, "output_format": output_format}
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc).splitlines()[-1]) from None
    settings = settings_from(config, database_url)

    async def go() -> list[dict[str, Any]]:
        async with local_state(settings) as state:
            return await state.knowledge.search(org, kb_id, body)

    table = Table("#", "score", "document", "where", "text")
    for hit in run_async(go):
        where = f"page {hit['page']}" if hit["page"] else (hit.get("heading") or "")
        text = " ".join(hit["text"].split())
        table.add_row(
            str(hit["index"]), f"{hit['score']:.2f}", hit["document_name"], where,
            text[:200] + ("…" if len(text) > 200 else ""),
        )  # fmt: skip
    console.print(table)
