"""Indexing files in the background: parse, chunk, store (pages, chunks, full-text index).

:class:`Ingestor` runs in the server's task group (``flowserve.http.app``):
``kb_index_concurrency`` workers take file ids from a queue, and a sweep claims, at start and
then every ``interval`` seconds, the files left ``pending`` or ``parsed`` by a process that is
gone (its instance row no longer exists: ``flowserve.store.instances``), so indexing survives
a restart or a crash. An upload queues its file in the process that took it (which owns it).

A file goes ``pending`` → ``parsed`` (text extracted) → ``indexed``, or ``error`` with the
reason. Parsing and chunking are CPU work and run in worker threads. Every write is
conditional on the file's generation: work made stale meanwhile (new content, new
parameters, the file or KB deleted) is dropped, and a file queued again while being indexed
is indexed again after.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from flowserve.errors import BadFileError
from flowserve.knowledge import chunking, parsers
from flowserve.knowledge.blobs import BlobStore
from flowserve.knowledge.chunking import Chunk
from flowserve.knowledge.params import ChunkerParams
from flowserve.knowledge.parsers import ParsedDocument
from flowserve.knowledge.store import ERROR, PARSED, PENDING, KnowledgeStore
from flowserve.store.database import utcnow

if TYPE_CHECKING:
    from flowserve.knowledge.vectors import Vectors

log = logging.getLogger("flowserve.knowledge")
MAX_CHUNKS = 200_000  # per file: beyond, refused (a tiny chunk_size on a large file)


@dataclass(frozen=True, slots=True)
class Built:
    document: ParsedDocument
    chunks: list[Chunk]
    pages: list[tuple[int | None, int, str]]  # (page, start offset, text)

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"parser": self.document.parser}
        if self.document.pages is not None:
            meta["pages"] = self.document.pages
        meta["chunks"] = len(self.chunks)
        return meta


def page_texts(document: ParsedDocument) -> list[tuple[int | None, int, str]]:
    """The document's text by page (one entry, page None, without pages)."""
    if document.pages is None:
        return [(None, 0, document.text)]
    found: list[tuple[int | None, int, str]] = []
    blocks = document.blocks
    i = 0
    while i < len(blocks):
        j = i
        while j + 1 < len(blocks) and blocks[j + 1].page == blocks[i].page:
            j += 1
        start, end = blocks[i].start, blocks[j].end
        found.append((blocks[i].page, start, document.text[start:end]))
        i = j + 1
    return found


def build(parser: str, path: Any, params: ChunkerParams) -> Built:
    """Blocking: the file read, chunked and split by page. BadFileError if it cannot be."""
    try:
        document = parsers.parse(parser, path)
    except FileNotFoundError:
        raise BadFileError("the stored original is missing") from None
    chunks = chunking.chunk(document, params.chunk_size, params.chunk_overlap, params.chunker_type)
    if len(chunks) > MAX_CHUNKS:
        raise BadFileError(f"the file makes more than {MAX_CHUNKS} chunks: use a larger chunk_size")
    return Built(document, chunks, page_texts(document))


class Ingestor:
    def __init__(
        self,
        store: KnowledgeStore,
        blobs: BlobStore,
        owner: str,
        concurrency: int = 2,
        interval: float = 10.0,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.owner = owner
        self.concurrency = concurrency
        self.interval = interval
        self.vectors: Vectors | None = None  # set where dense retrieval is wired in
        self._send: MemoryObjectSendStream[str] | None = None
        self._waiting: set[str] = set()
        self._running: set[str] = set()
        self._again: set[str] = set()

    def enqueue(self, file_ids: Sequence[str] | str) -> None:
        """Queue files for indexing here (a no-op where no worker runs: the CLI indexes
        inline, a server's sweep takes them over)."""
        for file_id in [file_ids] if isinstance(file_ids, str) else file_ids:
            if self._send is None or file_id in self._waiting:
                continue
            if file_id in self._running:
                self._again.add(file_id)
                continue
            self._waiting.add(file_id)
            self._send.send_nowait(file_id)

    async def run(self) -> None:
        """Workers and the sweep, until cancelled."""
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        self._send = send
        try:
            async with anyio.create_task_group() as group:
                for _ in range(self.concurrency):
                    group.start_soon(self._worker, receive.clone())
                group.start_soon(self._sweep)
        finally:
            self._send = None
            send.close()
            receive.close()

    async def _sweep(self) -> None:
        while True:
            try:
                self.enqueue(await self.store.claim_orphans(self.owner))
            except Exception as exc:  # a busy or unreachable database: next time
                log.warning("could not look for files to index: %s", exc)
            await anyio.sleep(self.interval)

    async def _worker(self, receive: Any) -> None:
        async with receive:
            async for file_id in receive:
                self._waiting.discard(file_id)
                self._running.add(file_id)
                try:
                    await self.index_file(file_id)
                finally:
                    self._running.discard(file_id)
                    if file_id in self._again:
                        self._again.discard(file_id)
                        self.enqueue(file_id)

    async def index_file(self, file_id: str) -> None:
        """Index one file now, if it is pending or parsed; never raises for the file's
        own faults (they become its ``error``)."""
        found = await self.store.file_and_kb(file_id)
        if found is None:
            return
        row, kb = found
        if row.status not in (PENDING, PARSED):
            return
        params = ChunkerParams.model_validate(kb.indexing_params.get("chunker_params") or {})
        path = self.blobs.path(row.content_hash)
        try:
            built = await anyio.to_thread.run_sync(build, row.parser, path, params)
            await self.store.mark(file_id, row.generation, status=PARSED)
            # Vectors (dense retrieval) are computed here, before the swap.
            vectors = await self.vectors.embed_chunks(kb, built.chunks) if self.vectors else None
            written = await self.store.write_index(row, built.chunks, built.pages, built.metadata())
            if written and self.vectors is not None:
                await self.vectors.write(row, kb, vectors)
        except BadFileError as exc:
            await self.store.mark(file_id, row.generation, status=ERROR, error=exc.message)
            log.info("file %s could not be indexed: %s", file_id, exc.message)
            written = False
        except Exception:
            log.exception("indexing file %s failed", file_id)
            await self.store.mark(
                file_id, row.generation, status=ERROR, error="indexing failed (server error)"
            )
            written = False
        if written:
            log.info("file %s indexed: %d chunks", file_id, len(built.chunks))
        if kb.sync_requested_at is not None and not await self.store.pending_left(kb.id):
            await self.store.save_kb(kb, last_synced_at=utcnow(), sync_requested_at=None)
