"""Dense retrieval: chunk vectors written at indexing time, searched by cosine similarity.

A KB whose ``embedding_model`` is set gets one vector per chunk, made by the embedder the
name's prefix names (:mod:`flowserve.knowledge.embedders`) and stored L2-normalised as
float32 bytes in ``kb_vectors`` (migration 0006), deleted with its chunk by the foreign key.

Search is exact (every vector of the KBs is scored; at these sizes an approximate index
buys little and loses recall): the query is embedded with each KB's model, and on SQLite
with sqlite-vec loaded (:mod:`flowserve.store.sqlite_driver`) the database ranks the KBs'
vectors by ``vec_distance_cosine`` and returns the best ``top_k``; elsewhere (PostgreSQL, or
SQLite without the extension) the vectors are read and scored in numpy (a dot product of
normalised vectors is their cosine). Both give the same ranking. Scores are the cosine
clipped at 0 (contract 3.7).

Vectors stay rows of ``kb_vectors`` in sqlite-vec's own float32 format rather than a
``vec0`` virtual table: ``vec0`` fixes one dimension per table while each KB may pick its
model, its scan is exact too, and triggers into it would make every connection that deletes
a chunk need the extension (the ``sqlite3`` shell, a Python without it). pgvector is not
packaged for this machine's PostgreSQL 15 (Debian bookworm has no ``postgresql-15-pgvector``),
so PostgreSQL keeps the numpy path behind the same :meth:`Vectors.nearest`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, select, text

from flowserve.errors import BadFileError, ConfigError, ProviderError
from flowserve.knowledge.chunking import Chunk
from flowserve.knowledge.embedders import EmbedderRegistry
from flowserve.knowledge.models import KbChunk, KbFile, KbVector, KnowledgeBase
from flowserve.knowledge.search import COLUMNS, Hit
from flowserve.providers.base import ProviderEnv
from flowserve.providers.endpoints import EndpointPolicy
from flowserve.store.database import Database

if TYPE_CHECKING:
    import numpy as np

    from flowserve.config import Settings


DIGITS = 6  # of a similarity (see _NEAREST)


def model_of(kb: KnowledgeBase) -> str | None:
    params = kb.indexing_params.get("embedding_params") or {}
    model = params.get("embedding_model")
    return model if isinstance(model, str) and model else None


def _numpy() -> Any:
    # Imported when vectors are first used: numpy costs ~15 MB and ~0.1 s at start, and a
    # server whose KBs are keyword-only (the default) never needs it.
    import numpy

    return numpy


def _unit(matrix: np.ndarray) -> np.ndarray:
    np = _numpy()
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (matrix / norms).astype("<f4")


class Vectors:
    """Embedding at indexing time, storage, and nearest-chunk search."""

    def __init__(self, db: Database, embedders: EmbedderRegistry) -> None:
        self.db = db
        self.embedders = embedders

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> Vectors:
        """The embedders of the entry points, configured by the providers' sections and
        bound by the server's endpoint policy."""
        env = ProviderEnv(environ=dict(os.environ), settings=settings.providers)
        policy = EndpointPolicy(tuple(settings.allowed_base_urls), tuple(settings.allowed_key_envs))
        return cls(db, EmbedderRegistry.from_entry_points(env, policy))

    def knows(self, model: str) -> bool:
        """Whether ``model`` (``<provider>.<model>``) can embed on this server."""
        return self.embedders.problem(model) is None

    async def embed_chunks(self, kb: KnowledgeBase, chunks: Sequence[Chunk]) -> np.ndarray | None:
        """The chunks' vectors under the KB's model (None for a keyword-only KB). A failure
        is the file's ``error``, saying which model failed and why (never a key)."""
        model = model_of(kb)
        if model is None or not chunks:
            return None
        np = _numpy()
        try:
            found = await self.embedders.embed(model, [c.text for c in chunks])
        except (ProviderError, ConfigError) as exc:
            raise BadFileError(f"embedding with {model} failed: {exc}") from None
        return _unit(np.asarray(found, dtype=np.float64))

    async def write(self, file: KbFile, kb: KnowledgeBase, vectors: np.ndarray | None) -> None:
        """Store the vectors of the file's chunks (just written, in chunk order)."""
        model = model_of(kb)
        if vectors is None or model is None:
            return
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(KbChunk.id, KbChunk.chunk_index).where(KbChunk.file_id == file.id)
                )
            ).all()
            by_index = {index: chunk_id for chunk_id, index in rows}
            ids = [by_index.get(i) for i in range(len(vectors))]
            if len(rows) != len(vectors) or None in ids:
                return  # replaced meanwhile: the newer indexing writes its own
            await s.execute(delete(KbVector).where(KbVector.chunk_id.in_(ids)))
            s.add_all(
                KbVector(
                    chunk_id=chunk_id,
                    kb_id=file.kb_id,
                    model=model,
                    dimensions=int(vectors.shape[1]),
                    embedding=vectors[i].tobytes(),
                )
                for i, chunk_id in enumerate(ids)
            )

    async def nearest(
        self, kb_ids: Sequence[str], query: str, top_k: int
    ) -> list[tuple[int, float]]:
        """(chunk id, cosine) of the ``top_k`` nearest chunks, best first."""
        np = _numpy()
        async with self.db.session() as s:
            kbs = list(
                (await s.scalars(select(KnowledgeBase).where(KnowledgeBase.id.in_(kb_ids)))).all()
            )
        by_model: dict[str, list[str]] = {}
        for kb in kbs:
            model = model_of(kb)
            if model is not None:
                by_model.setdefault(model, []).append(kb.id)
        scored: list[tuple[int, float]] = []
        for model, ids in by_model.items():
            q = _unit(np.asarray(await self.embedders.embed(model, [query]), dtype=np.float64))[0]
            if self.db.vector_functions:
                scored.extend(await self._nearest_in_sql(ids, model, q, top_k))
            else:
                scored.extend(await self._nearest_in_numpy(ids, model, q, top_k))
        scored.sort(key=lambda pair: (-pair[1], pair[0]))
        return scored[:top_k]

    async def _nearest_in_sql(
        self, kb_ids: list[str], model: str, q: np.ndarray, top_k: int
    ) -> list[tuple[int, float]]:
        # dimensions = the query's: vectors of an older model of the same name (re-indexed
        # soon) are skipped, as vec_distance_cosine refuses vectors of unequal length
        params = {"ids": kb_ids, "model": model, "dims": int(q.shape[0]), "q": q.tobytes(),
                  "k": top_k}  # fmt: skip
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(_NEAREST, params)).all()
        return [(int(chunk_id), float(similarity)) for chunk_id, similarity in rows]

    async def _nearest_in_numpy(
        self, kb_ids: list[str], model: str, q: np.ndarray, top_k: int
    ) -> list[tuple[int, float]]:
        np = _numpy()
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(KbVector.chunk_id, KbVector.embedding).where(
                        KbVector.kb_id.in_(kb_ids), KbVector.model == model
                    )
                )
            ).all()
        if not rows:
            return []
        chunk_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4")
        matrix = matrix.reshape(len(rows), -1)
        if matrix.shape[1] != q.shape[0]:
            return []  # vectors of an older model of the same name: re-indexed soon
        sims = np.round((matrix @ q).astype(np.float64), DIGITS)
        best = np.lexsort((chunk_ids, -sims))[:top_k]  # best first, ties by chunk id
        return [(int(chunk_ids[i]), float(sims[i])) for i in best]


# sqlite-vec's cosine distance is 1 - cosine; the vectors are float32 BLOBs, its own format.
# Similarities are rounded to DIGITS places on both paths: float32 sums in another order
# differ in the 7th digit, and the same ranking (ties by chunk id) must come from either.
_NEAREST = text(
    f"SELECT chunk_id, round(1.0 - vec_distance_cosine(embedding, :q), {DIGITS}) AS similarity "
    "FROM kb_vectors WHERE kb_id IN :ids AND model = :model AND dimensions = :dims "
    "ORDER BY similarity DESC, chunk_id LIMIT :k"
).bindparams(bindparam("ids", expanding=True))


_CHUNKS = (
    f"SELECT {COLUMNS} FROM kb_chunks c JOIN kb_files f ON f.id = c.file_id WHERE c.id IN :ids"
)


class SemanticRetriever:
    """The ``semantic`` strategy: nearest chunks by cosine, scores clipped at 0."""

    strategy = "semantic"

    def __init__(self, vectors: Vectors) -> None:
        self.vectors = vectors

    async def search(self, kb_ids: Sequence[str], query: str, top_k: int) -> list[Hit]:
        if not kb_ids or not query.strip():
            return []
        try:
            nearest = await self.vectors.nearest(kb_ids, query, top_k)
        except ConfigError as exc:
            raise ProviderError(f"semantic search: {exc.message}") from None
        if not nearest:
            return []
        statement = text(_CHUNKS).bindparams(bindparam("ids", expanding=True))
        async with self.vectors.db.engine.connect() as conn:
            rows = (await conn.execute(statement, {"ids": [c for c, _ in nearest]})).all()
        found: dict[int, Any] = {row[0]: row for row in rows}
        hits = []
        for chunk_id, similarity in nearest:
            row = found.get(chunk_id)
            if row is None:  # deleted meanwhile
                continue
            hits.append(Hit.of(row, score=max(0.0, min(1.0, similarity))))
        return hits
