"""What the HTTP routes, the CLI and the nodes call: knowledge bases, their files, search,
and per-user document buckets (contract part 3). Every call names the org; nothing here
speaks HTTP.

Provider keys given at create (``indexing_params.embedding_params.api_key``) are stored
encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) under a key derived
from the server's ``secret_key`` setting, and never echoed; without ``secret_key`` they are
refused. Retrieved text is data: it is returned as it is, never rendered as a template.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from flowserve.errors import InputError, NotFoundError
from flowserve.knowledge import formats
from flowserve.knowledge.blobs import BlobStore, default_root
from flowserve.knowledge.ingest import Ingestor, build
from flowserve.knowledge.keyword import KeywordRetriever
from flowserve.knowledge.models import DOCUMENTS, KB, KbFile, KnowledgeBase
from flowserve.knowledge.objects import Bucket, citations, file_json, kb_json
from flowserve.knowledge.params import (
    ChunkerParams,
    CreateKnowledgeBase,
    IndexingParams,
    SearchRequest,
    UpdateKnowledgeBase,
    merged,
)
from flowserve.knowledge.search import Hit, Index
from flowserve.knowledge.store import INDEXED, Counts, KnowledgeStore
from flowserve.knowledge.upload import Received
from flowserve.knowledge.vectors import SemanticRetriever, Vectors
from flowserve.store.database import Database, utcnow

if TYPE_CHECKING:
    from flowserve.config import Settings
    from flowserve.flows.graph import Flow
    from flowserve.flows.service import FlowService


def files_node_ids(flow: Flow) -> set[str]:
    """The ids of the flow's ``files`` nodes (the per-user documents' inputs)."""
    return {node_id for node_id, node in flow.nodes.items() if node.spec.type == "files"}


__all__ = ["Bucket", "KnowledgeService", "file_json", "files_node_ids", "kb_json"]


class KnowledgeService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        owner: str,
        flows: FlowService | None = None,
        embedding_models: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.store = KnowledgeStore(db)
        self.blobs = BlobStore(settings.kb_storage_dir or default_root(settings.database_url))
        self.owner = owner
        self.flows = flows
        self.vectors = Vectors.from_settings(db, settings)  # dense retrieval
        # which embedding models are configured
        self.embedding_models = embedding_models or self.vectors.knows
        keyword = KeywordRetriever(
            db, settings.kb_keyword_max_df, parallel=settings.kb_keyword_parallel
        )
        self.index = Index([keyword, SemanticRetriever(self.vectors)])
        self.ingest = Ingestor(
            self.store, self.blobs, owner, settings.kb_index_concurrency,
            settings.heartbeat_interval,
        )  # fmt: skip
        self.ingest.vectors = self.vectors

    # knowledge bases

    def _check_params(self, params: IndexingParams, model_given: bool) -> dict[str, Any]:
        if params.ocr:
            raise InputError("OCR is not available", ("body", "indexing_params", "ocr"))
        chunker = params.chunker_params
        if chunker.chunk_overlap >= chunker.chunk_size:
            raise InputError(
                "chunk_overlap must be less than chunk_size",
                ("body", "indexing_params", "chunker_params"),
            )
        embedding = params.embedding_params
        model = embedding.embedding_model if model_given else self.settings.default_embedding_model
        loc = ("body", "indexing_params", "embedding_params", "embedding_model")
        if model is not None and not self.embedding_models(model):
            raise InputError(
                f"unknown embedding model {model!r}: no embedding provider configured on this "
                "server offers it (null: keyword search only)",
                loc,
            )
        data = params.model_dump(mode="json")
        data["embedding_params"] = {"embedding_model": model}
        return data

    def _seal(self, api_key: str | None, model: str | None) -> str | None:
        if api_key is None:
            return None
        loc = ("body", "indexing_params", "embedding_params", "api_key")
        if model is None:
            raise InputError("api_key needs an embedding_model", loc)
        secret = self.settings.secret_key
        if secret is None:
            raise InputError(
                "not supported: configure the provider on the server (storing provider keys "
                "needs the server's secret_key setting)",
                loc,
            )
        from cryptography.fernet import Fernet

        key = base64.urlsafe_b64encode(hashlib.sha256(secret.get_secret_value().encode()).digest())
        return Fernet(key).encrypt(api_key.encode()).decode()

    async def _json(self, row: KnowledgeBase) -> dict[str, Any]:
        counts = await self.store.counts([row.id])
        return kb_json(row, counts.get(row.id, Counts()))

    async def create(self, org_id: str, body: CreateKnowledgeBase) -> dict[str, Any]:
        given = "embedding_model" in body.indexing_params.embedding_params.model_fields_set
        params = self._check_params(body.indexing_params, given)
        model = params["embedding_params"]["embedding_model"]
        sealed = self._seal(body.indexing_params.embedding_params.api_key, model)
        now = utcnow()
        row = KnowledgeBase(
            id=str(uuid.uuid4()),
            org_id=org_id,
            kind=KB,
            name=body.name,
            description=body.description,
            indexing_params=params,
            api_key_encrypted=sealed,
            org_level_role=body.org_level_role,
            created_at=now,
            updated_at=now,
        )
        await self.store.add_kb(row)
        return kb_json(row, Counts())

    async def list_kbs(
        self, org_id: str, cursor: tuple[Any, str] | None, forward: bool, page_size: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        from flowserve.knowledge.store import encode_cursor

        rows = await self.store.list_kbs(org_id, cursor, forward, page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size] if forward else rows[-page_size:]
        counts = await self.store.counts([r.id for r in rows])
        last = (rows[-1] if forward else rows[0]) if rows else None
        following = encode_cursor(last.created_at, last.id) if more and last else None
        return [kb_json(r, counts.get(r.id, Counts())) for r in rows], following

    async def get(self, org_id: str, kb_id: str) -> dict[str, Any]:
        return await self._json(await self.store.get_kb(org_id, kb_id))

    async def update(self, org_id: str, kb_id: str, body: UpdateKnowledgeBase) -> dict[str, Any]:
        row = await self.store.get_kb(org_id, kb_id)
        values: dict[str, Any] = {}
        for name in ("name", "description", "org_level_role"):
            if name in body.model_fields_set and getattr(body, name) is not None:
                values[name] = getattr(body, name)
        reindex = False
        if body.indexing_params is not None:
            params = merged(row.indexing_params, body.indexing_params)
            checked = self._check_params(params, True)
            if checked != row.indexing_params:
                values["indexing_params"] = checked
                reindex = True
            key = body.indexing_params.embedding_params.api_key
            if key is not None:
                values["api_key_encrypted"] = self._seal(
                    key, checked["embedding_params"]["embedding_model"]
                )
        values["updated_at"] = utcnow()
        row = await self.store.save_kb(row, **values)
        if reindex:
            self.ingest.enqueue(await self.store.requeue(row.id, self.owner, only_unindexed=False))
        return await self._json(row)

    async def delete(self, org_id: str, kb_id: str) -> None:
        row = await self.store.get_kb(org_id, kb_id)
        await self._drop_blobs(await self.store.delete_kb(row.id))

    async def _drop_blobs(self, digests: Sequence[str]) -> None:
        for digest in set(digests):
            if not await self.store.hash_in_use(digest):
                await anyio.to_thread.run_sync(self.blobs.remove, digest)

    async def sync(self, org_id: str, kb_id: str) -> None:
        row = await self.store.get_kb(org_id, kb_id)
        queued = await self.store.requeue(row.id, self.owner, only_unindexed=True)
        now = utcnow()
        if queued:
            await self.store.save_kb(row, sync_requested_at=now)
            self.ingest.enqueue(queued)
        else:
            await self.store.save_kb(row, last_synced_at=now, sync_requested_at=None)

    # files

    async def _accept(self, received: Received) -> formats.Sniffed:
        try:
            return await anyio.to_thread.run_sync(formats.sniff, received.temp, received.filename)
        except BaseException:
            received.discard()
            raise

    async def _store_file(
        self, kb: KnowledgeBase, received: Received, sniffed: formats.Sniffed
    ) -> tuple[str, bool]:
        try:
            file_id, changed, replaced = await self.store.put_file(
                kb.id, received.filename, received.sha256, sniffed.mime, sniffed.parser,
                received.size, self.owner,
            )  # fmt: skip
            await anyio.to_thread.run_sync(self.blobs.place, received.temp, received.sha256)
        finally:
            received.discard()
        if replaced is not None:
            await self._drop_blobs([replaced])
        return file_id, changed

    async def upload(self, org_id: str, kb_id: str, received: Received) -> tuple[str, bool]:
        """Store the file and queue it; (its resource id, whether anything changed)."""
        try:
            kb = await self.store.get_kb(org_id, kb_id)
        except BaseException:
            received.discard()
            raise
        sniffed = await self._accept(received)
        file_id, changed = await self._store_file(kb, received, sniffed)
        if changed:
            self.ingest.enqueue(file_id)
        return file_id, changed

    async def files(
        self, org_id: str, kb_id: str, cursor: tuple[Any, str] | None, forward: bool, size: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        from flowserve.knowledge.store import encode_cursor

        kb = await self.store.get_kb(org_id, kb_id)
        rows = await self.store.list_files(kb.id, cursor, forward, size + 1)
        more = len(rows) > size
        rows = rows[:size] if forward else rows[-size:]
        last = (rows[-1] if forward else rows[0]) if rows else None
        following = encode_cursor(last.created_at, last.id) if more and last else None
        return [file_json(r) for r in rows], following

    async def file(self, org_id: str, kb_id: str, file_id: str) -> KbFile:
        kb = await self.store.get_kb(org_id, kb_id)
        return await self.store.get_file(kb.id, file_id)

    def original(self, row: KbFile) -> Path:
        return self.blobs.path(row.content_hash)

    async def delete_file(self, org_id: str, kb_id: str, file_id: str) -> None:
        row = await self.file(org_id, kb_id, file_id)
        await self.store.delete_file(row.id)
        await self._drop_blobs([row.content_hash])

    # search

    def default_strategy(self, kbs: Sequence[KnowledgeBase]) -> str:
        vectors = all(k.indexing_params["embedding_params"]["embedding_model"] for k in kbs)
        return "hybrid" if vectors and "hybrid" in self.index.strategies else "keyword"

    async def search(self, org_id: str, kb_id: str, body: SearchRequest) -> list[dict[str, Any]]:
        kb = await self.store.get_kb(org_id, kb_id)
        strategy = body.query_strategy or self.default_strategy([kb])
        if strategy != "keyword" and self.default_strategy([kb]) != "hybrid":
            raise InputError(
                f"query_strategy {strategy!r} needs vectors: this knowledge base has no "
                "embedding model; use 'keyword'",
                ("body", "query_strategy"),
            )
        deep = body.top_k if body.output_format == "chunks" else min(body.top_k * 5, 500)
        hits = await self.index.search([kb.id], body.query, deep, strategy)
        return await self.citations(hits, body.output_format, body.top_k)

    async def citations(
        self,
        hits: Sequence[Hit],
        output_format: str = "chunks",
        top_k: int | None = None,
        node_id: str | None = None,
        bucket: Bucket | None = None,
    ) -> list[dict[str, Any]]:
        """Contract 3.7's citation objects for ``hits``: one per chunk, page or document
        (``output_format``), best first, at most ``top_k``."""
        return await citations(self.store, hits, output_format, top_k, node_id, bucket)

    # per-user documents (contract 3.5)

    async def bucket(
        self, org_id: str, flow_id: str, node_id: str, user_id: str, create: bool = False
    ) -> Bucket | None:
        """The bucket of ``user_id`` at a ``files`` node of the flow (NotFoundError if the
        flow is unknown or the node is not one); None if it has none yet and not ``create``."""
        assert self.flows is not None
        loaded = await self.flows.get(org_id, flow_id)
        if node_id not in files_node_ids(loaded.flow):
            raise NotFoundError(f"node {node_id!r} is not a files node of flow {flow_id!r}")
        row = await self.store.find_bucket(org_id, flow_id, node_id, user_id)
        if row is None and create:
            now = utcnow()
            model = self.settings.default_embedding_model
            params = IndexingParams().model_dump(mode="json")
            params["embedding_params"] = {"embedding_model": model}
            row = await self.store.add_bucket(
                KnowledgeBase(
                    id=str(uuid.uuid4()), org_id=org_id, kind=DOCUMENTS, flow_id=flow_id,
                    node_id=node_id, user_id=user_id, name=f"documents of {user_id}"[:2048],
                    description="", indexing_params=params, created_at=now, updated_at=now,
                )
            )  # fmt: skip
        return None if row is None else Bucket(row, org_id, flow_id, node_id, user_id)

    async def add_document(self, bucket: Bucket, received: Received) -> dict[str, Any]:
        """Check, parse, chunk and index the file before answering (so the next run sees
        it); BadFileError (422) if it cannot be read, and then nothing changes."""
        sniffed = await self._accept(received)
        params = ChunkerParams.model_validate(bucket.row.indexing_params["chunker_params"])
        try:
            built = await anyio.to_thread.run_sync(build, sniffed.parser, received.temp, params)
        except BaseException:
            received.discard()
            raise
        file_id, _ = await self._store_file(bucket.row, received, sniffed)
        row = await self.store.get_file(bucket.row.id, file_id)
        if row.status != INDEXED:
            await self.store.write_index(row, built.chunks, built.pages, built.metadata())
        return {
            "filename": row.resource_path,
            "resource_id": row.id,
            "size": row.size,
            "content_mime": row.content_mime,
            "status": INDEXED,
        }

    async def documents(self, bucket: Bucket | None) -> list[str]:
        if bucket is None:
            return []
        return [row.resource_path for row in await self.store.all_files(bucket.row.id)]

    async def document(self, bucket: Bucket | None, filename: str) -> KbFile:
        if bucket is None:
            raise NotFoundError(f"file {filename[:300]!r} not found")
        return await self.store.file_named(bucket.row.id, filename)

    async def delete_document(self, bucket: Bucket | None, filename: str) -> None:
        row = await self.document(bucket, filename)
        await self.store.delete_file(row.id)
        await self._drop_blobs([row.content_hash])
