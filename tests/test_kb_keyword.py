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

from flowserve.knowledge.keyword import _SQLITE, PRUNE_FROM
from flowserve.store.database import Database
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

    from flowserve.config import Settings

    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValidationError):
            Settings(kb_keyword_max_df=bad)


def test_a_word_is_counted_again_once_the_table_has_grown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from flowserve.config import Settings
    from flowserve.knowledge import keyword
    from flowserve.knowledge.params import CreateKnowledgeBase
    from flowserve.knowledge.service import KnowledgeService
    from flowserve.knowledge.upload import Received
    from flowserve.store.keys import KeyStore

    monkeypatch.setattr(keyword, "TOTAL_TTL", 0.0)  # the table's size is read every query
    url = f"sqlite+aiosqlite:///{tmp_path / 'grow.db'}"

    async def go() -> tuple[list[str], list[str]]:
        db = Database(url)
        await db.create_schema()
        try:
            await KeyStore(db).create_org("acme")
            settings = Settings(database_url=url, kb_storage_dir=tmp_path / "kb")
            knowledge = KnowledgeService(db, settings, owner="t")
            body = CreateKnowledgeBase.model_validate(
                {"indexing_params": {"chunker_params": {"chunk_size": 40, "chunk_overlap": 0}}}
            )
            kb_id = (await knowledge.create("acme", body))["knowledge_base_id"]

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
    # "lion" is counted again (the table more than doubled): left out, it pads nothing
    assert len(after) == 3 and all("zebra" in t.lower() for t in after)
