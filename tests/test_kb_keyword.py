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
from flowserve.knowledge.fts5 import _SQLITE, PRUNE_FROM
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

    async def plan(score: str) -> list[str]:
        db = Database(srv.database_url)
        try:
            sql = "EXPLAIN QUERY PLAN " + _SQLITE.replace("{score}", score)
            statement = text(sql).bindparams(bindparam("kb_ids", expanding=True))
            params = {"match": '"zebra"', "kb_ids": [kb_id], "top_k": 10, "low": 0, "high": 9}
            async with db.engine.connect() as conn:
                return [row[-1] for row in (await conn.execute(statement, params | {"d0": 3}))]
        finally:
            await db.aclose()

    for score in ("-bm25(kb_chunks_fts)", "flowrank(kb_chunks_fts, :top_k, 1, 0.5, 0, :d0)"):
        steps = [s for s in asyncio.run(plan(score)) if s.startswith(("SCAN", "SEARCH"))]
        assert steps[0].startswith("SCAN kb_chunks_fts VIRTUAL TABLE"), steps
        assert not any("ix_kb_chunks_kb" in step for step in steps), steps


def test_the_setting_is_checked(tmp_path: Path) -> None:
    from pydantic import ValidationError

    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValidationError):
            Settings(kb_keyword_max_df=bad)
    for bad_count in (0, -1, 17, 2.5):
        with pytest.raises(ValidationError):
            Settings(kb_keyword_parallel=bad_count)


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
    """A Zipf-like corpus of 1,600 chunks and 120 queries of common and rare words: MaxScore's
    restricted statements return the one full statement's hits, scores and all, whether the
    first round answers or a second one with more essential words does."""
    import random

    from flowserve.knowledge import fts5, keyword, maxscore

    rng = random.Random(11)
    vocab = _VOCAB
    taken: list[bool] = []
    real_exact = maxscore.exact
    monkeypatch.setattr(maxscore, "exact", lambda *a: taken.append(real_exact(*a)) or taken[-1])
    grown: list[int] = []
    real_grow = maxscore.grow
    monkeypatch.setattr(maxscore, "grow", lambda *a: grown.append(real_grow(*a)) or grown[-1])
    spans: list[tuple[int, int]] = []
    real_ranges = fts5.ranges
    monkeypatch.setattr(fts5, "PARALLEL_FROM", 1_000)

    def recorded(*args, **kw):  # the ranges of each search cut in more than one
        got = real_ranges(*args, **kw)
        spans.extend(got if len(got) > 1 else [])
        return got

    monkeypatch.setattr(fts5, "ranges", recorded)
    counted: dict[str, tuple[int, int, int]] = {}

    async def go() -> dict[str, list]:
        db, knowledge, kb_id = await _service(tmp_path, "ms", {"name": "z"})
        try:
            file_id = await _file(knowledge, kb_id)
            await _zipf_chunks(db, kb_id, file_id, rng, 1_600)
            queries = []
            for _ in range(120):
                common = rng.choices(vocab[:30], k=rng.randint(1, 4))
                rare = rng.sample(vocab[30:], k=rng.randint(1, 3))
                queries.append(" ".join(rng.sample(common + rare, k=len(common) + len(rare))))
            answers = {}
            assert db.rank_function  # flowrank ranks, but where said otherwise below
            for name, rank, maxscore_on, parallel in (
                ("fast", True, True, 1),
                ("plain", True, False, 1),
                ("ranges", True, True, 3),
                ("bm25", False, False, 1),  # FTS5's own bm25(), the one full statement
                ("bm25 maxscore", False, True, 3),
            ):
                db.rank_function = rank
                retriever = keyword.KeywordRetriever(db, 0.5, maxscore_on, parallel)
                answers[name] = [await retriever.search([kb_id], q, 10) for q in queries]
                counted[name] = (sum(taken), len(grown), len(spans))
            return answers
        finally:
            await db.aclose()

    answers = asyncio.run(go())
    # the same chunks, in the same order, with the same scores, as bm25() ranks them
    assert answers["fast"] == answers["plain"] == answers["ranges"] == answers["bm25"]
    assert answers["bm25 maxscore"] == answers["bm25"]
    assert any(len(hits) == 10 for hits in answers["fast"])
    exact, grew, _ = counted["fast"]
    assert exact >= 40  # a third or more were answered by MaxScore's first round
    assert grew >= 5  # and some by a second
    assert counted["plain"][2] == 0 and counted["ranges"][2] == 120 * 3  # 3 ranges each


_VOCAB = [f"w{i}" for i in range(3_000)]
_WEIGHTS = [1.0 / (i + 1) for i in range(len(_VOCAB))]  # w0 in most chunks, w2999 rare


async def _file(knowledge: KnowledgeService, kb_id: str) -> str:
    """A file record in ``kb_id`` for chunks written straight to the table."""
    file_id, _, _ = await knowledge.store.put_file(
        kb_id, "z.txt", "0" * 64, "text/plain", "text", 1, "t"
    )
    return file_id


async def _insert_chunks(db: Database, kb_id: str, file_id: str, bodies: list[str]) -> None:
    """One chunk of the file per text of ``bodies``, in their order."""
    from sqlalchemy import insert

    from flowserve.knowledge.models import KbChunk

    rows = [
        {"kb_id": kb_id, "file_id": file_id, "chunk_index": i, "text": body, "heading": None,
         "page": None, "char_start": 0, "char_end": len(body)}
        for i, body in enumerate(bodies)
    ]  # fmt: skip
    async with db.session() as s:
        await s.execute(insert(KbChunk), rows)


async def _zipf_chunks(db: Database, kb_id: str, file_id: str, rng, n: int) -> None:
    """``n`` chunks of 20-120 words drawn from :data:`_VOCAB` by Zipf weights."""
    bodies = [" ".join(rng.choices(_VOCAB, _WEIGHTS, k=rng.randint(20, 120))) for _ in range(n)]
    await _insert_chunks(db, kb_id, file_id, bodies)


def test_each_kb_sees_only_its_own_chunks_among_many(tmp_path: Path) -> None:
    """Three KBs holding the same texts in one table: a search of one KB returns only its
    chunks, of two KBs both kinds, each with the score the one-KB search gave it."""
    import random

    from flowserve.knowledge import keyword

    async def go() -> tuple[dict[str, list], list, dict[str, str]]:
        db, knowledge, first = await _service(tmp_path, "three", {"name": "a"})
        try:
            kbs = [first]
            for name in ("b", "c"):
                made = await knowledge.create("acme", CreateKnowledgeBase(name=name))
                kbs.append(made["knowledge_base_id"])
            owner = {}
            for kb_id in kbs:
                file_id = await _file(knowledge, kb_id)
                await _zipf_chunks(db, kb_id, file_id, random.Random(5), 700)
                owner[kb_id] = kb_id
            search = keyword.KeywordRetriever(db, 0.5)
            query = "w3 w40 w900 w1500"
            one = {kb_id: await search.search([kb_id], query, 10) for kb_id in kbs}
            two = await search.search(kbs[:2], query, 20)
            return one, two, {"a": kbs[0], "b": kbs[1], "c": kbs[2]}
        finally:
            await db.aclose()

    one, two, ids = asyncio.run(go())
    for kb_id, hits in one.items():
        assert len(hits) == 10 and {h.knowledge_base_id for h in hits} == {kb_id}
    # same texts, same scores: the two-KB search interleaves a and b, and never c
    assert {h.knowledge_base_id for h in two} == {ids["a"], ids["b"]}
    assert [h.text for h in two[::2]] == [h.text for h in one[ids["a"]]]
    assert [round(h.score, 12) for h in two[::2]] == [round(h.score, 12) for h in two[1::2]]


def test_a_kb_token_is_one_word_of_the_index_whatever_the_id_holds(tmp_path: Path) -> None:
    """The token the search matches is what SQLite's hex() made of the stored id."""
    from flowserve.knowledge import fts5

    async def go() -> list[tuple[str, int]]:
        db, knowledge, kb_id = await _service(tmp_path, "tok", {"name": "a"})
        try:
            file_id = await _file(knowledge, kb_id)
            out = []
            for odd in ("ed-ing s", "Zoë/../x", kb_id):
                async with db.session() as s:  # a chunk filed under each id
                    await s.execute(
                        text(
                            "INSERT INTO kb_chunks (file_id, kb_id, chunk_index, text, "
                            "char_start, char_end) VALUES (:f, :odd, 0, 'zebra', 0, 5)"
                        ),
                        {"odd": odd, "f": file_id},
                    )
                match = "{fts_kb} : " + f'"{fts5.kb_token(odd)}"'
                async with db.engine.connect() as conn:
                    count = await conn.execute(fts5.COUNT_MATCH, {"match": match})
                    out.append((odd, int(count.scalar_one())))
            return out
        finally:
            await db.aclose()

    counts = asyncio.run(go())
    assert [n for _, n in counts] == [1, 1, 1], counts


def test_an_index_made_before_kb_tokens_is_rebuilt_with_them(tmp_path: Path) -> None:
    """A database at revision 0006 holding chunks upgrades (the index is rebuilt with each
    chunk's KB token: its chunks are found) and downgrades again (found by the old index)."""
    from alembic import command

    from flowserve.knowledge import fts5, keyword
    from flowserve.store import schema

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"

    async def migrate(db: Database, revision: str, down: bool = False) -> None:
        def step(conn) -> None:
            (command.downgrade if down else command.upgrade)(schema._config(conn), revision)

        async with db.engine.begin() as conn:
            await conn.run_sync(step)

    async def found(db: Database, match: str) -> int:
        async with db.engine.connect() as conn:
            return int((await conn.execute(fts5.COUNT_MATCH, {"match": match})).scalar_one())

    async def go() -> tuple[int, list[str], int]:
        db = Database(url)
        try:
            await migrate(db, "0006")
            now = "2026-01-01 00:00:00"
            async with db.session() as s:
                for sql in (
                    "INSERT INTO orgs (id, name, created_at) VALUES ('acme', '', :now)",
                    "INSERT INTO knowledge_bases (id, org_id, kind, name, description, "
                    "indexing_params, created_at, updated_at) VALUES ('kb-1', 'acme', 'kb', "
                    "'n', '', '{}', :now, :now)",
                    "INSERT INTO kb_files (id, kb_id, resource_path, content_hash, "
                    "content_mime, parser, size, status, dataloader_metadata, user_metadata, "
                    "generation, created_at, modified_at) VALUES ('f-1', 'kb-1', 'z.txt', "
                    "'h', 'text/plain', 'text', 1, 'indexed', '{}', '{}', 1, :now, :now)",
                    "INSERT INTO kb_chunks (file_id, kb_id, chunk_index, text, char_start, "
                    "char_end) VALUES ('f-1', 'kb-1', 0, 'the zebra crossed', 0, 17)",
                ):
                    await s.execute(text(sql), {"now": now})
            old = await found(db, '"zebra"')
            await migrate(db, "head")
            hits = await keyword.KeywordRetriever(db).search(["kb-1"], "zebra", 5)
            await migrate(db, "0006", down=True)
            return old, [h.text for h in hits], await found(db, '"zebra"')
        finally:
            await db.aclose()

    old, hits, back = asyncio.run(go())
    assert (old, hits, back) == (1, ["the zebra crossed"], 1)


def test_a_search_that_sees_the_index_change_answers_with_the_full_statement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts made before a write are not used to bound scores after it: when the index's
    version differs after MaxScore's statements, the one full statement answers."""
    import random

    from sqlalchemy import event

    from flowserve.knowledge import fts5, keyword

    async def go() -> tuple[list, list, list[str]]:
        db, knowledge, kb_id = await _service(tmp_path, "ver", {"name": "z"})
        try:
            file_id = await _file(knowledge, kb_id)
            await _zipf_chunks(db, kb_id, file_id, random.Random(3), 1_500)
            matches: list[str] = []

            @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
            def seen(_c, _cur, statement, params, _ctx, _many) -> None:
                if "rowid BETWEEN" in statement:  # a ranked statement: by which, what match
                    match = next(p for p in params if isinstance(p, str) and "{text" in p)
                    matches.append(("flowrank" if "flowrank(" in statement else "bm25", match))

            search = keyword.KeywordRetriever(db, 1.0)  # every word kept
            query = "w1 w2 w2500"
            steady = await search.search([kb_id], query, 10)
            real = fts5.index_version
            calls = iter(range(10**6))

            async def moving(conn):  # a write lands between each read of the version
                return (await real(conn) or 0) + next(calls) + 1

            monkeypatch.setattr(fts5, "index_version", moving)
            matches.clear()
            moved = await search.search([kb_id], query, 10)
            return steady, moved, matches
        finally:
            await db.aclose()

    steady, moved, matches = asyncio.run(go())
    assert moved == steady and len(steady) == 10
    # MaxScore's rounds and the full statement by flowrank with the counts it was given, and
    # as the version moved under both, the full statement by bm25(), which counts its own
    *counted, (last, full) = matches
    assert [rank for rank, _ in counted] == ["flowrank"] * len(counted) and len(counted) >= 2
    assert " OR " in counted[0][1] and counted[-1][1] == counted[-1][1].split(" OR (")[0]
    assert last == "bm25" and full.startswith("{fts_kb}") and " OR (" not in full


def test_the_ranges_searched_at_once_cover_every_chunk_once() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from flowserve.knowledge import fts5

    @given(st.integers(1, 10**12), st.integers(fts5.PARALLEL_FROM, 10**6), st.integers(1, 16))
    def check(low: int, width: int, parallel: int) -> None:
        high = low + width
        parts = fts5.ranges(low, high, parallel)
        if parallel == 1:
            assert parts == [fts5._ALL]
            return
        assert len(parts) == parallel
        at = low  # the parts, in order, each start where the last ended: [low, high] once
        for start, end in parts:
            if start <= end:  # (a part past the end is empty)
                assert start == at
                at = end + 1
        assert at == high + 1

    check()
    assert fts5.ranges(1, fts5.PARALLEL_FROM - 1, 4) == [fts5._ALL]  # a small KB
    assert fts5.ranges(None, None, 4) == [fts5._ALL]  # an empty one


def test_flowrank_ranks_as_bm25_whether_or_not_the_kbs_share_their_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KBs whose chunks interleave in the table are filtered by their token; a KB alone in
    its span of chunk ids by the span. Either way flowrank's answers (MaxScore, ranges) are
    bm25()'s full statement's, scores and all, and hold only the KBs asked for."""
    import random

    from sqlalchemy import event

    from flowserve.knowledge import fts5, keyword

    monkeypatch.setattr(fts5, "PARALLEL_FROM", 500)

    async def go() -> tuple[dict, dict, list[str], dict[str, set[str]]]:
        db, knowledge, a = await _service(tmp_path, "span", {"name": "a"})
        try:
            kbs = {"a": a}
            for name in ("b", "c", "d"):
                kbs[name] = (await knowledge.create("acme", CreateKnowledgeBase(name=name)))[
                    "knowledge_base_id"
                ]
            files = {}
            for name, kb_id in kbs.items():
                files[name] = await _file(knowledge, kb_id)
            rng = random.Random(17)
            for _ in range(4):  # a, b and c written in turns; d after them, in one go
                for name in "abc":
                    await _zipf_chunks(db, kbs[name], files[name], rng, 150)
            await _zipf_chunks(db, kbs["d"], files["d"], rng, 600)
            queries = []
            for _ in range(30):
                common = rng.choices(_VOCAB[:30], k=rng.randint(1, 4))
                rare = rng.sample(_VOCAB[30:], k=rng.randint(1, 3))
                queries.append(" ".join(common + rare))
            matches: list[str] = []

            @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
            def seen(_c, _cur, statement, params, _ctx, _many) -> None:
                if "flowrank(" in statement:
                    matches.append(next(p for p in params if isinstance(p, str) and "{" in p))

            sets = {"a": ["a"], "ac": ["a", "c"], "d": ["d"], "abcd": list("abcd")}
            got: dict[str, dict] = {"flowrank": {}, "bm25": {}}
            for rank, maxscore_on, parallel in ((True, True, 2), (False, False, 1)):
                db.rank_function = rank
                search = keyword.KeywordRetriever(db, 0.5, maxscore_on, parallel)
                for key, names in sets.items():
                    ids = [kbs[n] for n in names]
                    got["flowrank" if rank else "bm25"][key] = [
                        await search.search(ids, q, 10) for q in queries
                    ]
            asked = {key: {kbs[n] for n in names} for key, names in sets.items()}
            return got["flowrank"], got["bm25"], matches, asked
        finally:
            await db.aclose()

    flowrank, bm25, matches, asked = asyncio.run(go())
    for key in asked:
        assert flowrank[key] == bm25[key], key
        hits = [h for answer in flowrank[key] for h in answer]
        assert hits and {h.knowledge_base_id for h in hits} <= asked[key]
    # both filters were used: by token (a, a+c) and by span alone (d, all four)
    assert any(m.startswith("{fts_kb}") for m in matches)
    assert any("{fts_kb}" not in m for m in matches)


def test_flowrank_is_built_and_refuses_arguments_it_cannot_use(tmp_path: Path) -> None:
    """The install builds flowrank (x86-64 Linux with SQLite's headers) and each SQLite
    connection loads it; given the wrong arguments it fails with a clear error."""

    import random

    from sqlalchemy.exc import OperationalError

    async def go() -> tuple[bool, list[str]]:
        db, knowledge, kb_id = await _service(tmp_path, "args", {"name": "a"})
        errors = []
        try:
            file_id = await _file(knowledge, kb_id)
            await _zipf_chunks(db, kb_id, file_id, random.Random(1), 50)
            for args in ("10, 1.0", "0, 1.0, 0.5, 0.0, 5", "10, 1.0, 0.5, 0.0, 5, 6"):
                sql = (
                    f"SELECT flowrank(kb_chunks_fts, {args}) FROM kb_chunks_fts "
                    "WHERE kb_chunks_fts MATCH '\"w0\"'"
                )
                async with db.engine.connect() as conn:
                    try:
                        await conn.execute(text(sql))
                    except OperationalError as e:  # flowrank's own message
                        errors.append(str(e))
            return db.rank_function, errors
        finally:
            await db.aclose()

    built, errors = asyncio.run(go())
    assert built
    assert len(errors) == 3
    assert "wants top_k, a weight per column and a document count per phrase" in errors[0]
    assert "top_k out of range" in errors[1]
    assert "wants top_k" in errors[2]


def test_flowrank_ranks_as_bm25_where_chunks_are_the_query_words_alone(tmp_path: Path) -> None:
    """Short chunks that hold nothing but repeats of a few words: a chunk's length is then
    its most frequent word's hits, the least length flowrank's bound assumes, so a bound
    any less tight would drop chunks that belong in the answer."""
    import random

    from flowserve.knowledge import keyword

    async def go() -> tuple[list, list]:
        db, knowledge, kb_id = await _service(tmp_path, "short", {"name": "s"})
        try:
            rng = random.Random(23)
            vocab, weights = _VOCAB[:40], _WEIGHTS[:40]
            bodies = []
            for _ in range(1_500):
                words = rng.choices(vocab, weights, k=rng.randint(1, 2))
                bodies.append(" ".join(w for w in words for _ in range(rng.randint(1, 6))))
            await _insert_chunks(db, kb_id, await _file(knowledge, kb_id), bodies)
            queries = [" ".join(rng.sample(vocab, k=rng.randint(2, 4))) for _ in range(60)]
            answers = []
            for rank, maxscore_on in ((True, True), (True, False), (False, False)):
                db.rank_function = rank
                search = keyword.KeywordRetriever(db, 1.0, maxscore_on, 1)
                answers.append([await search.search([kb_id], q, 10) for q in queries])
            return answers[:2], answers[2]
        finally:
            await db.aclose()

    flowrank, bm25 = asyncio.run(go())
    assert all(len(hits) == 10 for hits in bm25)
    assert flowrank[0] == bm25 and flowrank[1] == bm25
