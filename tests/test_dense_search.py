"""Dense retrieval through the knowledge service: vectors written at indexing, semantic and
hybrid search with contract 3.7's scores, vectors deleted with their file and KB, embedding
failures as the file's error — on SQLite and PostgreSQL, against a fake ``/v1/embeddings``."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from flowserve.config import Settings
from flowserve.errors import InputError
from flowserve.knowledge.models import KbVector
from flowserve.knowledge.params import CreateKnowledgeBase, SearchRequest
from flowserve.knowledge.service import KnowledgeService
from flowserve.knowledge.upload import Received
from flowserve.store import sqlite_driver
from flowserve.store.database import Database
from tests.fakes._server import Scenario, serve
from tests.test_embedders import EmbeddingsFake
from tests.test_migrations import pg_url  # noqa: F401  (a fixture)

MODEL = "openai-compatible.bow"
DOCS = {
    "sockets.txt": "A socket is an endpoint for network communication between processes.",
    "files.txt": "Open a file by path and read its bytes; close the descriptor afterwards.",
    "memory.txt": "Map memory pages into the address space of the calling process.",
}


@pytest.fixture(scope="module")
def fake() -> Iterator[EmbeddingsFake]:
    with serve(EmbeddingsFake()) as app:
        app.api_key = None
        yield app


def _received(knowledge: KnowledgeService, name: str, data: bytes) -> Received:
    temp = knowledge.blobs.new_temp()
    temp.write_bytes(data)
    return Received(temp, len(data), hashlib.sha256(data).hexdigest(), name)


async def _vectors(db: Database) -> int:
    async with db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(KbVector)) or 0)


async def _open(
    url: str, tmp: Path, fake: EmbeddingsFake
) -> tuple[Database, KnowledgeService, str]:
    """A database with org acme, the knowledge service, and a KB embedded by MODEL."""
    settings = Settings(
        database_url=url,
        kb_storage_dir=tmp / "kb",
        providers={"openai-compatible": {"base_url": fake.base_url + "/v1"}},
    )
    db = Database(url)
    await db.create_schema()
    from flowserve.store.keys import KeyStore

    await KeyStore(db).create_org("acme")
    knowledge = KnowledgeService(db, settings, owner="tester")
    body = CreateKnowledgeBase.model_validate(
        {"indexing_params": {"embedding_params": {"embedding_model": MODEL}}}
    )
    kb_id = (await knowledge.create("acme", body))["knowledge_base_id"]
    return db, knowledge, kb_id


async def _scenario(url: str, tmp: Path, fake: EmbeddingsFake) -> dict[str, Any]:
    db, knowledge, kb_id = await _open(url, tmp, fake)
    out: dict[str, Any] = {}
    try:
        ids = {}
        for name, content in DOCS.items():
            rid, _ = await knowledge.upload(
                "acme", kb_id, _received(knowledge, name, content.encode())
            )
            await knowledge.ingest.index_file(rid)
            ids[name] = rid
        out["in_sql"], out["flowrank"] = db.vector_functions, db.rank_function
        out["sqlite"] = getattr(db.engine.dialect.dbapi, "sqlite", None)
        out["statuses"] = [(await knowledge.file("acme", kb_id, r)).status for r in ids.values()]
        out["vectors"] = await _vectors(db)
        query = "network endpoint between processes"
        out["semantic"] = await knowledge.search(
            "acme", kb_id, SearchRequest(query=query, query_strategy="semantic", top_k=3)
        )
        out["hybrid"] = await knowledge.search("acme", kb_id, SearchRequest(query=query, top_k=3))
        # no shared word with any document: keyword finds nothing, semantic still ranks
        out["keyword_none"] = await knowledge.search(
            "acme", kb_id, SearchRequest(query="zzz qqq", query_strategy="keyword")
        )
        await knowledge.delete_file("acme", kb_id, ids["sockets.txt"])
        out["after_file_delete"] = await _vectors(db)
        out["semantic_after"] = await knowledge.search(
            "acme", kb_id, SearchRequest(query=query, query_strategy="semantic", top_k=3)
        )
        # the embedder fails: the file is in error, saying so
        fake.script(Scenario(status=500), Scenario(status=500), Scenario(status=500))
        rid, _ = await knowledge.upload("acme", kb_id, _received(knowledge, "x.txt", b"more text"))
        await knowledge.ingest.index_file(rid)
        failed = await knowledge.file("acme", kb_id, rid)
        out["failed"] = (failed.status, failed.error)
        # a keyword-only KB refuses semantic search
        plain = (await knowledge.create("acme", CreateKnowledgeBase(name="plain")))[
            "knowledge_base_id"
        ]
        with pytest.raises(InputError) as caught:
            await knowledge.search(
                "acme", plain, SearchRequest(query="x", query_strategy="semantic")
            )
        out["refused"] = (caught.value.loc, caught.value.message)
        # an unconfigured model is refused at create
        bad = CreateKnowledgeBase.model_validate(
            {
                "indexing_params": {
                    "embedding_params": {"embedding_model": "openai.text-embedding-3-large"}
                }
            }
        )
        with pytest.raises(InputError) as unknown:
            await knowledge.create("acme", bad)
        out["unknown"] = unknown.value.loc
        await knowledge.delete("acme", kb_id)
        out["after_kb_delete"] = await _vectors(db)
        await knowledge.vectors.embedders.aclose()
    finally:
        await db.aclose()
    return out


def _check(out: dict[str, Any]) -> None:
    assert out["statuses"] == ["indexed"] * 3
    assert out["vectors"] == 3
    semantic = out["semantic"]
    assert semantic[0]["document_name"] == "sockets.txt"
    assert [r["index"] for r in semantic] == [1, 2, 3]
    scores = [r["score"] for r in semantic]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores) and scores[0] < 1.0  # a cosine, not rescaled
    hybrid = out["hybrid"]  # the default strategy of a KB with vectors
    assert hybrid[0]["document_name"] == "sockets.txt" and hybrid[0]["score"] == 1.0
    assert out["keyword_none"] == []
    assert out["after_file_delete"] == 2
    assert "sockets.txt" not in [r["document_name"] for r in out["semantic_after"]]
    status, error = out["failed"]
    assert status == "error" and MODEL in error and "HTTP 500" in error
    loc, message = out["refused"]
    assert loc == ("body", "query_strategy") and "keyword" in message
    assert out["unknown"][-1] == "embedding_model"
    assert out["after_kb_delete"] == 0


def test_dense_search_on_sqlite(tmp_path: Path, fake: EmbeddingsFake):
    url = f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}"
    out = asyncio.run(_scenario(url, tmp_path, fake))
    _check(out)
    assert out["in_sql"] is True  # x86-64 Linux has the wheels: sqlite-vec ranks
    assert out["flowrank"] is True  # and the install built flowrank


def test_dense_search_without_the_sqlite_wheels(
    tmp_path: Path, fake: EmbeddingsFake, monkeypatch: pytest.MonkeyPatch
):
    import sqlite3

    # where pysqlite3-binary is not built: the standard sqlite3, vectors scored in numpy
    monkeypatch.setattr(sqlite_driver, "module", lambda: sqlite3)
    sqlite_driver.driver.cache_clear()
    try:
        out = asyncio.run(_scenario(f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}", tmp_path, fake))
    finally:
        sqlite_driver.driver.cache_clear()
    _check(out)
    assert out["in_sql"] is False and out["sqlite"] is sqlite3
    assert out["flowrank"] is False  # no extension loading: keyword search ranks by bm25()


def test_dense_search_on_postgres(pg_url: str, tmp_path: Path, fake: EmbeddingsFake):  # noqa: F811
    _check(asyncio.run(_scenario(pg_url, tmp_path, fake)))


async def _both_ways(url: str, tmp: Path, fake: EmbeddingsFake) -> dict[str, Any]:
    db, knowledge, kb_id = await _open(url, tmp, fake)
    try:
        words = "socket file memory process network page read write open close map bytes"
        vocab = words.split()
        for i in range(40):  # documents of different word mixes
            text = " ".join(vocab[(i * k) % len(vocab)] for k in range(1, 2 + i % 7))
            rid, _ = await knowledge.upload(
                "acme", kb_id, _received(knowledge, f"d{i}.txt", text.encode())
            )
            await knowledge.ingest.index_file(rid)
        out: dict[str, Any] = {"in_sql": db.vector_functions}
        for in_sql in (True, False):
            db.vector_functions = in_sql
            found = []
            for query in ("network socket", "read bytes from a file", "map memory pages"):
                hits = await knowledge.search(
                    "acme", kb_id, SearchRequest(query=query, query_strategy="semantic", top_k=8)
                )
                found.append([(h["document_name"], round(h["score"], 5)) for h in hits])
            out[in_sql] = found
        await knowledge.vectors.embedders.aclose()
        return out
    finally:
        await db.aclose()


def test_sqlite_vec_ranks_as_numpy_does(tmp_path: Path, fake: EmbeddingsFake):
    out = asyncio.run(_both_ways(f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}", tmp_path, fake))
    assert out["in_sql"] is True  # this platform has the wheels: vectors ranked in SQL
    assert all(len(hits) == 8 for hits in out[True])
    assert out[True] == out[False]


def test_semantic_and_hybrid_search_over_http(tmp_path: Path, fake: EmbeddingsFake):
    import json

    from tests.conftest import start_server, stop_server
    from tests.kb_helpers import KB

    providers = {"openai-compatible": {"base_url": fake.base_url + "/v1"}}
    srv = start_server(tmp_path, env={"FLOWSERVE_PROVIDERS": json.dumps(providers)})
    try:
        kb = KB(srv)
        params = {"embedding_params": {"embedding_model": MODEL}}
        kb_id = kb.create(name="dense", indexing_params=params)
        for name, content in DOCS.items():
            assert kb.add(kb_id, name, content.encode())["status"] == "indexed"
        query = "network endpoint between processes"
        semantic = kb.search(kb_id, query, query_strategy="semantic", top_k=3)
        assert [h["document_name"] for h in semantic][:1] == ["sockets.txt"]
        scores = [h["score"] for h in semantic]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and scores[0] < 1.0
        hybrid = kb.search(kb_id, query, top_k=3)  # a KB with vectors: hybrid by default
        assert hybrid[0]["document_name"] == "sockets.txt" and hybrid[0]["score"] == 1.0
        # no shared word: keyword finds nothing, semantic still ranks every document
        assert kb.search(kb_id, "zzz qqq", query_strategy="keyword") == []
        assert len(kb.search(kb_id, "zzz qqq", query_strategy="semantic", top_k=5)) == 3
    finally:
        stop_server(srv)
