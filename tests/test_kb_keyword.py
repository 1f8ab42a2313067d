"""Keyword search at scale on SQLite (flowserve.knowledge.keyword): a word in most chunks is
left out of the match, which leaves BM25's ranking as it was and stops such words padding
the results; ``kb_keyword_max_df`` 1 keeps every word. And the statement starts from the
full-text index whatever SQLite's planner would prefer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import bindparam, text

from flowserve.config import Settings
from flowserve.knowledge.keyword import _SQLITE, PRUNE_FROM
from flowserve.knowledge.params import CreateKnowledgeBase
from flowserve.knowledge.service import KnowledgeService
from flowserve.store.database import Database
from flowserve.store.keys import KeyStore
from tests.conftest import Server, start_server, stop_server
from tests.kb_helpers import KB

FILLER = 1_200  # chunks that all hold "the" (and "store"), more than PRUNE_FROM
RARE = [
    "The zebra crossed the road.",
    "A zebra at the zoo, the zebra again.",
    "The zebra and the lion.",
]


def _text() -> bytes:
    paragraphs = [f"Note {i}: the item is in the store." for i in range(FILLER)]
    for n, line in enumerate(RARE):
        paragraphs.insert(300 * (n + 1), line)
    return "\n\n".join(paragraphs).encode()


def _kb(server: Server) -> tuple[KB, str]:
    kb = KB(server)
    params = {"chunker_params": {"chunk_size": 40, "chunk_overlap": 0}}
    kb_id = kb.create(name="notes", indexing_params=params)
    row = kb.add(kb_id, "notes.txt", _text())
    assert row["status"] == "indexed", row
    assert row["dataloader_metadata"]["chunks"] >= PRUNE_FROM
    return kb, kb_id


@pytest.fixture(scope="module", params=["0.5", "1"], ids=["max_df=0.5", "max_df=1"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    srv = start_server(
        tmp_path_factory.mktemp("kw"), env={"FLOWSERVE_KB_KEYWORD_MAX_DF": request.param}
    )
    try:
        yield request.param, srv, *_kb(srv)
    finally:
        stop_server(srv)


def test_a_word_in_most_chunks_changes_no_ranking(world) -> None:
    max_df, _, kb, kb_id = world
    rare = kb.search(kb_id, "zebra", top_k=10)
    assert len(rare) == 3 and all("zebra" in h["text"].lower() for h in rare)
    both = kb.search(kb_id, "the zebra store", top_k=10)
    assert [h["text"] for h in both[:3]] == [h["text"] for h in rare]
    if max_df == "0.5":  # "the" and "store" are left out: nothing pads the three hits
        assert both == rare
    else:  # every word matched: filler chunks follow, scored near nothing
        assert len(both) == 10 and all(h["score"] < 0.05 for h in both[3:])


def test_a_query_of_common_words_only_still_finds_chunks(world) -> None:
    _, _, kb, kb_id = world
    found = kb.search(kb_id, "the store", top_k=5)
    assert len(found) == 5 and all("store" in h["text"] for h in found)


def test_the_search_starts_from_the_full_text_index(world) -> None:
    _, srv, _, kb_id = world

    async def plan() -> list[str]:
        db = Database(srv.database_url)
        try:
            statement = text("EXPLAIN QUERY PLAN " + _SQLITE).bindparams(
                bindparam("kb_ids", expanding=True)
            )
            params = {"match": '"zebra"', "kb_ids": [kb_id], "top_k": 10}
            async with db.engine.connect() as conn:
                return [row[-1] for row in (await conn.execute(statement, params)).all()]
        finally:
            await db.aclose()

    steps = [s for s in asyncio.run(plan()) if s.startswith(("SCAN", "SEARCH"))]
    assert steps[0].startswith("SCAN kb_chunks_fts VIRTUAL TABLE"), steps
    assert not any("ix_kb_chunks_kb" in step for step in steps), steps


def test_the_setting_is_checked(tmp_path: Path) -> None:
    from pydantic import ValidationError

    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValidationError):
            Settings(kb_keyword_max_df=bad)


async def _service(tmp: Path, name: str, body: dict) -> tuple[Database, KnowledgeService, str]:
    """A SQLite database of its own with org acme, the knowledge service and one KB."""
    url = f"sqlite+aiosqlite:///{tmp / (name + '.db')}"
    db = Database(url)
    await db.create_schema()
    await KeyStore(db).create_org("acme")
    knowledge = KnowledgeService(
        db, Settings(database_url=url, kb_storage_dir=tmp / name), owner="t"
    )
    made = await knowledge.create("acme", CreateKnowledgeBase.model_validate(body))
    return db, knowledge, made["knowledge_base_id"]


def test_a_word_is_counted_again_once_the_index_has_changed(tmp_path: Path) -> None:
    import hashlib

    from flowserve.knowledge.upload import Received

    async def go() -> tuple[list[str], list[str]]:
        params = {"chunker_params": {"chunk_size": 40, "chunk_overlap": 0}}
        db, knowledge, kb_id = await _service(tmp_path, "grow", {"indexing_params": params})
        try:

            async def add(name: str, data: bytes) -> None:
                temp = knowledge.blobs.new_temp()
                temp.write_bytes(data)
                received = Received(temp, len(data), hashlib.sha256(data).hexdigest(), name)
                rid, _ = await knowledge.upload("acme", kb_id, received)
                await knowledge.ingest.index_file(rid)

            async def texts(query: str) -> list[str]:
                return [h.text for h in await knowledge.index.search([kb_id], query, 10)]

            await add("notes.txt", _text())  # "lion" in one chunk of ~1,200
            before = await texts("lion zebra")
            lions = "\n\n".join(f"Lion {i} sleeps here." for i in range(1_400))
            await add("lions.txt", lions.encode())  # now in more than half the chunks
            return before, await texts("lion zebra")
        finally:
            await db.aclose()

    before, after = asyncio.run(go())
    assert len(before) == 3 and all("zebra" in t.lower() for t in before)
    # "lion" is counted again (the index changed): in most chunks now, left out, it pads nothing
    assert len(after) == 3 and all("zebra" in t.lower() for t in after)


def test_maxscore_gives_the_full_statements_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Zipf-like corpus of 1,600 chunks and 120 queries of common and rare words: the
    two-statement MaxScore search returns the one full statement's hits, scores and all."""
    import random

    from sqlalchemy import insert

    from flowserve.knowledge import keyword, maxscore
    from flowserve.knowledge.models import KbChunk

    rng = random.Random(11)
    vocab = [f"w{i}" for i in range(3_000)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]  # w0 in most chunks, w2999 rare
    taken: list[bool] = []
    real_exact = maxscore.exact
    monkeypatch.setattr(maxscore, "exact", lambda *a: taken.append(real_exact(*a)) or taken[-1])

    async def go() -> tuple[list, list]:
        db, knowledge, kb_id = await _service(tmp_path, "ms", {"name": "z"})
        try:
            file_id, _, _ = await knowledge.store.put_file(
                kb_id, "z.txt", "0" * 64, "text/plain", "text", 1, "t"
            )
            async with db.session() as s:
                rows = []
                for i in range(1_600):
                    words = rng.choices(vocab, weights, k=rng.randint(20, 120))
                    body = " ".join(words)
                    rows.append({"kb_id": kb_id, "file_id": file_id, "chunk_index": i,
                                 "text": body, "heading": None, "page": None,
                                 "char_start": 0, "char_end": len(body)})  # fmt: skip
                await s.execute(insert(KbChunk), rows)
            fast = keyword.KeywordRetriever(db, 0.5, use_maxscore=True)
            plain = keyword.KeywordRetriever(db, 0.5, use_maxscore=False)
            a, b = [], []
            for _ in range(120):
                common = rng.choices(vocab[:30], k=rng.randint(1, 4))
                rare = rng.sample(vocab[30:], k=rng.randint(1, 3))
                query = " ".join(rng.sample(common + rare, k=len(common) + len(rare)))
                a.append(await fast.search([kb_id], query, 10))
                b.append(await plain.search([kb_id], query, 10))
            return a, b
        finally:
            await db.aclose()

    fast, plain = asyncio.run(go())
    assert fast == plain  # the same chunks, in the same order, with the same scores
    assert sum(taken) >= 40  # and a third or more were answered by the two smaller statements
    assert any(len(hits) == 10 for hits in fast)
