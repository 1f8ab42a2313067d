"""The JSON objects the knowledge API gives (contract 3.3, 3.7): a KnowledgeBase, a
KnowledgeBaseFile, and the citations a search returns (one per chunk, page or document).
A provider key is never among them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flowserve.knowledge.models import KbFile, KnowledgeBase
from flowserve.knowledge.search import Hit
from flowserve.knowledge.store import Counts, KnowledgeStore, aware


def _iso(t: Any) -> str | None:
    return None if t is None else aware(t).isoformat()


def file_json(row: KbFile) -> dict[str, Any]:
    return {
        "knowledge_base_id": row.kb_id,
        "resource_id": row.id,
        "resource_path": row.resource_path,
        "created_at": _iso(row.created_at),
        "modified_at": _iso(row.modified_at),
        "indexed_at": _iso(row.indexed_at),
        "dataloader_metadata": row.dataloader_metadata,
        "user_metadata": row.user_metadata,
        "content_hash": row.content_hash,
        "content_mime": row.content_mime,
        "size": row.size,
        "status": row.status,
        "error": row.error,
    }


def kb_json(row: KnowledgeBase, counts: Counts) -> dict[str, Any]:
    params = dict(row.indexing_params)
    params["embedding_params"] = {**params.get("embedding_params", {}), "api_key": None}
    return {
        "knowledge_base_id": row.id,
        "connection_id": None,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "connection_source_ids": [],
        "website_sources": [],
        "connection_provider_type": None,
        "is_empty": counts.files == 0,
        "total_size": counts.size,
        "total_files": counts.files,
        "total_indexed_files": counts.indexed,
        "total_error_files": counts.errors,
        "last_synced_at": _iso(row.last_synced_at),
        "name": row.name,
        "description": row.description,
        "indexing_params": params,
        "org_id": row.org_id,
        "role": row.role,
        "org_level_role": row.org_level_role,
        "user_metadata_schema": None,
        "dataloader_metadata_schema": None,
    }


@dataclass(frozen=True, slots=True)
class Bucket:
    """A per-user documents bucket and where its files are downloaded from."""

    row: KnowledgeBase
    org_id: str
    flow_id: str
    node_id: str
    user_id: str

    def url(self, filename: str) -> str:
        parts = "/".join(quote(p, safe="") for p in (self.org_id, self.flow_id, self.node_id))
        user = quote(self.user_id, safe="")
        return f"/documents/{parts}/{user}/file?filename={quote(filename, safe='')}"


async def citations(
    store: KnowledgeStore,
    hits: Sequence[Hit],
    output_format: str = "chunks",
    top_k: int | None = None,
    node_id: str | None = None,
    bucket: Bucket | None = None,
) -> list[dict[str, Any]]:
    """Contract 3.7's citation objects for ``hits``: one per chunk, page or document
    (``output_format``), best first, at most ``top_k``."""
    units: list[tuple[Hit, str | None]] = []  # (best hit, text of the page or doc)
    if output_format == "chunks":
        units = [(hit, None) for hit in hits]
    else:
        pages = await store.pages(list({h.resource_id for h in hits}))
        seen: set[tuple[str, int | None]] = set()
        for hit in hits:
            key = (hit.resource_id, hit.page if output_format == "pages" else None)
            if key in seen:
                continue
            seen.add(key)
            rows = pages.get(hit.resource_id, [])
            if output_format == "pages":
                rows = [r for r in rows if r.page == hit.page]
            units.append((hit, "\n\n".join(r.text for r in rows) or hit.text))
    found = []
    for index, (hit, text) in enumerate(units[:top_k], start=1):
        chunked = text is None
        found.append(
            {
                "index": index,
                "node_id": node_id,
                "source": "user_document" if bucket else "knowledge_base",
                "knowledge_base_id": None if bucket else hit.knowledge_base_id,
                "resource_id": hit.resource_id,
                "document_name": hit.document_name,
                "page": hit.page if output_format != "docs" else None,
                "chunk_index": hit.chunk_index if chunked else None,
                "heading": hit.heading if chunked else None,
                "char_start": hit.start if chunked else None,
                "char_end": hit.end if chunked else None,
                "text": hit.text if text is None else text,
                "score": round(hit.score, 6),
                "url": bucket.url(hit.document_name)
                if bucket
                else f"/v1/knowledge-bases/{hit.knowledge_base_id}/resources/"
                f"{hit.resource_id}/file",
            }
        )
    return found
