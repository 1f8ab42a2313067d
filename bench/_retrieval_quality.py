"""In-process measurements through the knowledge service (``KnowledgeService`` on a SQLite
file database, as tests/test_dense_search.py drives it): ingestion, retrieval quality per
strategy, and keyword-search latency as the index grows."""

from __future__ import annotations

import hashlib
import random
import re
import time
from pathlib import Path
from typing import Any

from _retrieval_corpus import Page, pdf

from flowserve.config import Settings
from flowserve.knowledge.ingest import build
from flowserve.knowledge.params import ChunkerParams, CreateKnowledgeBase
from flowserve.knowledge.service import KnowledgeService
from flowserve.knowledge.upload import Received
from flowserve.store.database import Database
from flowserve.store.keys import KeyStore

ORG = "bench"
DENSE_MODEL = "local.smollm2-135m"
DEEP = 50  # chunks asked for per query; a document ranks by its best chunk
MAX_DFS = (1.0, 0.5, 0.2, 0.1, 0.05)  # kb_keyword_max_df settings compared


class World:
    """A fresh database, an org and the knowledge service."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.url = f"sqlite+aiosqlite:///{tmp / (name + '.db')}"
        self.settings = Settings(database_url=self.url, kb_storage_dir=tmp / (name + "-kb"))

    async def __aenter__(self) -> World:
        self.db = Database(self.url)
        await self.db.create_schema()
        await KeyStore(self.db).create_org(ORG)
        self.knowledge = KnowledgeService(self.db, self.settings, owner="bench")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.knowledge.vectors.embedders.aclose()
        await self.db.aclose()

    async def kb(self, model: str | None = None) -> str:
        body = CreateKnowledgeBase.model_validate(
            {"name": "man", "indexing_params": {"embedding_params": {"embedding_model": model}}}
        )
        return str((await self.knowledge.create(ORG, body))["knowledge_base_id"])

    async def add(self, kb_id: str, name: str, data: bytes) -> str:
        """Upload and index one file now (the service's own path); its resource id."""
        k = self.knowledge
        temp = k.blobs.new_temp()
        temp.write_bytes(data)
        received = Received(temp, len(data), hashlib.sha256(data).hexdigest(), name)
        rid, _ = await k.upload(ORG, kb_id, received)
        await k.ingest.index_file(rid)
        status = (await k.file(ORG, kb_id, rid)).status
        if status != "indexed":
            raise RuntimeError(f"{name}: {status}")
        return rid

    async def chunks(self, kb_id: str) -> int:
        from sqlalchemy import func, select

        from flowserve.knowledge.models import KbChunk

        async with self.db.session() as s:
            query = select(func.count()).select_from(KbChunk).where(KbChunk.kb_id == kb_id)
            return int(await s.scalar(query) or 0)


def _excerpt(text: str, chars: int) -> str:
    """The page with runs of blanks squeezed, cut at ``chars`` (≈ 4 characters a token)."""
    return re.sub(r"[ \t]+", " ", text).strip()[:chars]


async def _rank(w: World, kb_id: str, query: str, strategy: str, target: str) -> int | None:
    hits = await w.knowledge.index.search([kb_id], query, DEEP, strategy)
    docs: list[str] = []
    for hit in hits:
        if hit.resource_id not in docs:
            docs.append(hit.resource_id)
    return docs.index(target) + 1 if target in docs else None


async def evaluate(
    w: World, kb_id: str, targets: dict[str, str], pages: list[Page], strategy: str
) -> dict[str, Any]:
    ranks, took = [], []
    for page in pages:
        assert page.query is not None
        t = time.perf_counter()
        ranks.append(await _rank(w, kb_id, page.query, strategy, targets[page.name]))
        took.append(time.perf_counter() - t)
    n = len(ranks)
    return {
        "queries": n,
        "recall@1": sum(r == 1 for r in ranks) / n,
        "recall@5": sum(r is not None and r <= 5 for r in ranks) / n,
        "mrr": sum(1 / r for r in ranks if r) / n,
        "query_ms_mean": 1000 * sum(took) / n,
    }


async def quality(tmp: Path, pages: list[Page], dense_n: int, dense_chars: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    queried = [p for p in pages if p.query is not None]
    async with World(tmp, "quality") as w:
        kb_id = await w.kb()
        t = time.perf_counter()
        targets = {p.name: await w.add(kb_id, p.name + ".txt", p.text.encode()) for p in pages}
        out["text_ingest"] = {
            "pages": len(pages),
            "chunks": await w.chunks(kb_id),
            "seconds": time.perf_counter() - t,
            "mib": sum(len(p.text.encode()) for p in pages) / 2**20,
        }
        out["text_ingest"]["pages_per_s"] = len(pages) / out["text_ingest"]["seconds"]
        out["full_bm25"] = await evaluate(w, kb_id, targets, queried, "keyword")
        keyword = _fts5(w)
        default = keyword.max_df
        out["max_df"] = {}
        for max_df in MAX_DFS:
            keyword.max_df = max_df
            out["max_df"][str(max_df)] = await evaluate(w, kb_id, targets, queried, "keyword")
        keyword.max_df = default
    subset = sorted(random.Random(150).sample(queried, min(dense_n, len(queried))), key=str)
    async with World(tmp, "dense") as w:
        kb_id = await w.kb(DENSE_MODEL)
        t = time.perf_counter()
        targets = {
            p.name: await w.add(kb_id, p.name + ".txt", _excerpt(p.text, dense_chars).encode())
            for p in subset
        }
        out["dense_ingest"] = {
            "pages": len(subset),
            "chunks": await w.chunks(kb_id),
            "seconds": time.perf_counter() - t,
            "chars_per_page": dense_chars,
        }
        out["subset"] = {
            s: await evaluate(w, kb_id, targets, subset, s)
            for s in ("keyword", "semantic", "hybrid")
        }
    return out


async def pdf_ingest(tmp: Path, pages: list[Page], files: int, per_file: int) -> dict[str, Any]:
    docs = []
    for i in range(files):
        data, n = pdf(pages[i * per_file : (i + 1) * per_file])
        docs.append((f"man-{i:03d}.pdf", data, n))
    async with World(tmp, "pdf") as w:
        kb_id = await w.kb()
        t = time.perf_counter()
        for name, data, _ in docs:
            await w.add(kb_id, name, data)
        seconds = time.perf_counter() - t
        chunks = await w.chunks(kb_id)
    n_pages = sum(n for _, _, n in docs)
    return {
        "files": files,
        "pdf_pages": n_pages,
        "mib": sum(len(d) for _, d, _ in docs) / 2**20,
        "chunks": chunks,
        "seconds": seconds,
        "pages_per_s": n_pages / seconds,
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(w: World, kb_id: str, queries: list[str]) -> dict[str, Any]:
    for q in queries[:10]:  # warm the page cache, the connection pool and the word counts
        await w.knowledge.index.search([kb_id], q, 10, "keyword")
    took = []
    for q in queries:
        t = time.perf_counter()
        await w.knowledge.index.search([kb_id], q, 10, "keyword")
        took.append(1000 * (time.perf_counter() - t))
    return {
        "queries": len(queries),
        "p50_ms": _pct(took, 0.5),
        "p99_ms": _pct(took, 0.99),
        "max_ms": max(took),
    }


def _fts5(w: World) -> Any:
    """The SQLite keyword search of the service, whose settings the bench varies."""
    return w.knowledge.index.retrievers["keyword"].fts5  # type: ignore[attr-defined]


async def _latency(w: World, kb_id: str, queries: list[str]) -> dict[str, Any]:
    """Keyword latency at the default settings (word counts cold, then warm), then in one
    range (``kb_keyword_parallel`` 1), without MaxScore, ranked by FTS5's ``bm25()`` instead
    of flowrank (defaults, then the one statement), and at each ``kb_keyword_max_df`` of
    MAX_DFS."""
    keyword = _fts5(w)
    default = keyword.max_df
    out = {"chunks": await w.chunks(kb_id), "max_df_default": default,
           "parallel_default": keyword.parallel}  # fmt: skip
    # the first pass counts each word as it first comes (as after a write); then warm
    out["counts_cold"] = await _timed(w, kb_id, queries)
    out.update(await _timed(w, kb_id, queries))
    parallel, keyword.parallel = keyword.parallel, 1
    out["one_range"] = await _timed(w, kb_id, queries)
    keyword.use_maxscore = False
    out["one_range_no_maxscore"] = await _timed(w, kb_id, queries)
    keyword.parallel, keyword.use_maxscore = parallel, True
    out["flowrank"] = w.db.rank_function
    if w.db.rank_function:  # FTS5's bm25() ranking, as without the extension
        w.db.rank_function = False
        out["bm25"] = await _timed(w, kb_id, queries)
        keyword.parallel, keyword.use_maxscore = 1, False
        out["bm25_one_statement"] = await _timed(w, kb_id, queries)
        keyword.parallel, keyword.use_maxscore = parallel, True
        w.db.rank_function = True
    out["by_max_df"] = {}
    for max_df in MAX_DFS:
        keyword.max_df = max_df
        out["by_max_df"][str(max_df)] = await _timed(w, kb_id, queries)
    keyword.max_df = default
    return out


async def vector_scan(w: World, kb_id: str, dims: int, n_queries: int) -> dict[str, Any]:
    """Exact nearest-vector search over every chunk of the KB (random unit vectors of
    ``dims``, SmolLM2's width), top 10: in SQL (sqlite-vec) and in numpy, same answers."""
    import numpy as np
    from sqlalchemy import select

    from flowserve.knowledge.models import KbChunk, KbVector

    rng = np.random.default_rng(13)
    async with w.db.session() as s:
        ids = list((await s.scalars(select(KbChunk.id).where(KbChunk.kb_id == kb_id))).all())
    t = time.perf_counter()
    for start in range(0, len(ids), 5_000):
        part = ids[start : start + 5_000]
        m = rng.standard_normal((len(part), dims)).astype("<f4")
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        async with w.db.session() as s:
            s.add_all(
                KbVector(chunk_id=c, kb_id=kb_id, model="bench.random", dimensions=dims,
                         embedding=m[i].tobytes())
                for i, c in enumerate(part)
            )  # fmt: skip
    written_s = time.perf_counter() - t
    vectors = w.knowledge.vectors
    out: dict[str, Any] = {"vectors": len(ids), "dims": dims, "write_s": written_s}
    qs = rng.standard_normal((n_queries, dims))
    qs = (qs / np.linalg.norm(qs, axis=1, keepdims=True)).astype("<f4")
    answers = {}
    for name, fn in (("sql", vectors._nearest_in_sql), ("numpy", vectors._nearest_in_numpy)):
        if name == "sql" and not w.db.vector_functions:
            continue
        took, found = [], []
        for q in qs:
            t = time.perf_counter()
            found.append(await fn([kb_id], "bench.random", q, 10))
            took.append(1000 * (time.perf_counter() - t))
        answers[name] = found
        out[name] = {"queries": n_queries, "p50_ms": _pct(took, 0.5), "p99_ms": _pct(took, 0.99)}
    if len(answers) == 2:  # the same chunks in the same order, scores within float32's noise
        pairs = list(zip(answers["sql"], answers["numpy"], strict=True))
        out["same_order"] = all([c for c, _ in a] == [c for c, _ in b] for a, b in pairs)
        out["max_score_diff"] = max(
            abs(x[1] - y[1]) for a, b in pairs for x, y in zip(a, b, strict=True)
        )
    return out


async def scaling(
    tmp: Path, pages: list[Page], sizes: list[int], n_queries: int
) -> list[dict[str, Any]]:
    """Keyword (FTS5) search latency, top_k 10: over the man pages ingested through the
    service (until the first size, if they make more), then at each size the pages do not
    reach, their chunks written again (new files, same texts) through the store's own
    ``write_index``."""
    queries = [p.query for p in pages if p.query is not None]
    queries = [queries[i % len(queries)] for i in random.Random(7).sample(range(10**6), n_queries)]
    results = []
    async with World(tmp, "speed") as w:
        kb_id = await w.kb()
        store = w.knowledge.store
        made = 0
        for page in pages:
            if made >= sizes[0]:
                break
            await w.add(kb_id, page.name + ".txt", page.text.encode())
            made = await w.chunks(kb_id)
        results.append(await _latency(w, kb_id, queries))
        params = ChunkerParams()
        files = await store.all_files(kb_id)
        built = [
            (f, build(f.parser, w.knowledge.blobs.path(f.content_hash), params)) for f in files
        ]
        copy = 0
        for size in sizes:
            if made >= size:
                continue  # the pages themselves made it
            while made < size:
                copy += 1
                for f, b in built:
                    name = f"copy{copy}/{f.resource_path}"
                    digest = hashlib.sha256(name.encode()).hexdigest()
                    file_id, _, _ = await store.put_file(
                        kb_id, name, digest, f.content_mime, f.parser, f.size, "bench"
                    )
                    found = await store.file_and_kb(file_id)
                    assert found is not None
                    await store.write_index(found[0], b.chunks, b.pages, b.metadata())
                    made += len(b.chunks)
                    if made >= size:
                        break
            results.append(await _latency(w, kb_id, queries))
        results[-1]["vector_scan"] = await vector_scan(w, kb_id, 576, 50)
    return results
