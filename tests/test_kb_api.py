"""Knowledge bases over HTTP (contract 3.2-3.3, 3.6-3.7): create, list, read, update and
delete; upload, index in the background, list, download, replace and delete files; sync;
search that finds the right chunk with its page or heading. Then the store and keyword
search themselves, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowserve.config import Settings
from flowserve.knowledge.params import CreateKnowledgeBase, SearchRequest
from flowserve.knowledge.service import KnowledgeService
from flowserve.knowledge.upload import Received
from flowserve.store.database import Database
from tests.conftest import Server, make_org, start_server, stop_server
from tests.kb_helpers import KB, docx, pdf
from tests.test_migrations import pg_url  # noqa: F401  (a fixture)

HANDBOOK = (
    "# Handbook\n\nWelcome. This handbook answers common questions.\n\n"
    "## Refunds\n\nRefunds take five business days. Contact billing for a refund.\n\n"
    "## Shipping\n\nWe ship worldwide with tracked parcels.\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("kb"))
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture
def kb(server: Server) -> KB:
    return KB(server)


def test_create_read_list_update_delete(kb: KB):
    made = kb.call("POST", "/v1/knowledge-bases", json={"name": "Handbook"})
    assert made.status_code == 201
    body = made.json()
    assert body["name"] == "Handbook" and body["description"] == ""
    assert body["is_empty"] is True and body["total_files"] == 0 and body["total_size"] == 0
    assert body["connection_id"] is None and body["connection_source_ids"] == []
    assert body["last_synced_at"] is None
    assert body["indexing_params"] == {
        "ocr": False,
        "embedding_params": {"embedding_model": None, "api_key": None},
        "chunker_params": {"chunk_size": 1500, "chunk_overlap": 500, "chunker_type": "sentence"},
    }
    kb_id = body["knowledge_base_id"]
    assert kb.call("GET", f"/v1/knowledge-bases/{kb_id}").json() == body
    assert kb.call("GET", f"/v1/knowledge-bases/{kb_id.upper()}").json() == body

    changed = kb.call("PATCH", f"/v1/knowledge-bases/{kb_id}", json={"description": "FAQ"})
    assert changed.status_code == 200
    assert changed.json()["description"] == "FAQ" and changed.json()["name"] == "Handbook"

    assert kb.call("DELETE", f"/v1/knowledge-bases/{kb_id}").status_code == 204
    gone = kb.call("GET", f"/v1/knowledge-bases/{kb_id}")
    assert gone.status_code == 404 and gone.json() == {"detail": "knowledge base not found"}
    listed = kb.call("GET", "/v1/knowledge-bases", params={"page_size": 1000}).json()
    assert kb_id not in {k["knowledge_base_id"] for k in listed}


def test_the_list_is_newest_first_in_cursor_pages(kb: KB):
    made = [kb.create(name=f"paged {i}") for i in range(3)]
    first = kb.call("GET", "/v1/knowledge-bases", params={"page_size": 2})
    assert first.status_code == 200
    ids = [k["knowledge_base_id"] for k in first.json()]
    assert ids == [made[2], made[1]]
    cursor = first.headers["x-next-cursor"]
    second = kb.call("GET", "/v1/knowledge-bases", params={"page_size": 2, "cursor": cursor})
    assert second.json()[0]["knowledge_base_id"] == made[0]
    back = kb.call(
        "GET",
        "/v1/knowledge-bases",
        params={"page_size": 1, "cursor": cursor, "direction": "prev"},
    )
    assert [k["knowledge_base_id"] for k in back.json()] == [made[2]]
    bad = kb.call("GET", "/v1/knowledge-bases", params={"cursor": "nope", "direction": "up"})
    assert bad.status_code == 422
    assert {tuple(d["loc"]) for d in bad.json()["detail"]} == {
        ("query", "cursor"),
        ("query", "direction"),
    }


def test_upload_is_indexed_in_the_background_and_search_finds_the_chunk(kb: KB):
    kb_id = kb.create(name="handbook")
    sent = kb.upload(kb_id, "handbook.md", HANDBOOK.encode())
    assert sent.status_code == 202
    assert sent.json()["message"] == "File accepted; indexing started"
    rid = sent.json()["resource_id"]
    first = kb.call("GET", f"/v1/knowledge-bases/{kb_id}/resources/{rid}").json()
    assert first["status"] in ("pending", "parsed", "indexed")
    assert (first["indexed_at"] is None) == (first["status"] != "indexed")
    done = kb.wait(kb_id, rid)
    assert done["status"] == "indexed" and done["error"] is None and done["indexed_at"]
    assert done["content_hash"] == hashlib.sha256(HANDBOOK.encode()).hexdigest()
    assert done["content_mime"] == "text/markdown" and done["size"] == len(HANDBOOK.encode())
    assert done["dataloader_metadata"] == {"parser": "md", "chunks": 3}
    assert done["user_metadata"] == {} and done["resource_path"] == "handbook.md"

    [best, *rest] = kb.search(kb_id, "how long do refunds take?")
    assert best["text"].startswith("## Refunds\n\nRefunds take five business days")
    assert best["heading"] == "Handbook > Refunds" and best["page"] is None
    assert best["score"] == 1.0 and best["index"] == 1 and best["chunk_index"] == 1
    assert best["source"] == "knowledge_base" and best["knowledge_base_id"] == kb_id
    assert best["document_name"] == "handbook.md" and best["resource_id"] == rid
    assert best["url"] == f"/v1/knowledge-bases/{kb_id}/resources/{rid}/file"
    assert HANDBOOK[best["char_start"] : best["char_end"]] == best["text"]
    assert all(0 <= r["score"] <= best["score"] for r in rest)
    stats = kb.call("GET", f"/v1/knowledge-bases/{kb_id}").json()
    assert (stats["total_files"], stats["total_indexed_files"], stats["is_empty"]) == (1, 1, False)


def test_pdf_hits_carry_their_page_and_pages_or_docs_come_whole(kb: KB):
    kb_id = kb.create(name="manual")
    pages = [
        "Installing the printer. Unpack it and remove the tape.",
        "Replacing the toner cartridge. Open the front cover and pull the cartridge.",
        "Warranty. The warranty lasts two years.",
    ]
    assert kb.add(kb_id, "manual.pdf", pdf(pages))["dataloader_metadata"] == {
        "parser": "pdf",
        "pages": 3,
        "chunks": 3,
    }
    [hit, *_] = kb.search(kb_id, "toner cartridge")
    assert hit["page"] == 2 and "front cover" in hit["text"]
    [page] = kb.search(kb_id, "warranty years", output_format="pages", top_k=1)
    assert page["page"] == 3 and page["chunk_index"] is None and page["text"] == pages[2]
    [whole] = kb.search(kb_id, "warranty", output_format="docs")
    assert whole["page"] is None and whole["text"] == "\n\n".join(pages)


def test_docx_and_html_are_searchable_by_heading(kb: KB):
    kb_id = kb.create(name="office")
    kb.add(
        kb_id,
        "guide.docx",
        docx(
            [("h1", "Guide"), ("p", "General notes."), ("h2", "Returns"), ("p", "Within 30 days.")]
        ),
    )
    html = b"<h1>Policies</h1><p>Be kind.</p><h2>Holidays</h2><p>Twenty five days off.</p>"
    assert kb.add(kb_id, "policies.html", html)["status"] == "indexed"
    [hit, *_] = kb.search(kb_id, "returns")
    assert hit["document_name"] == "guide.docx" and hit["heading"] == "Guide > Returns"
    [hit, *_] = kb.search(kb_id, "holidays off")
    assert hit["document_name"] == "policies.html" and hit["text"].endswith("days off.")


def test_download_dedupe_replace_and_delete(kb: KB, server: Server):
    kb_id = kb.create(name="files")
    original = b"Alpha notes: the launch code word is pineapple."
    first = kb.upload(kb_id, "../../etc/notes.txt", original)
    rid = first.json()["resource_id"]
    row = kb.wait(kb_id, rid)
    assert row["resource_path"] == "notes.txt"  # no directories

    got = kb.call("GET", f"/v1/knowledge-bases/{kb_id}/resources/{rid}/file")
    assert got.status_code == 200 and got.content == original
    assert got.headers["content-type"].startswith("text/plain")
    assert got.headers["content-disposition"] == 'attachment; filename="notes.txt"'

    # the same bytes under the same name: nothing happens
    again = kb.upload(kb_id, "notes.txt", original)
    assert again.status_code == 202 and again.json()["resource_id"] == rid
    assert again.json()["message"] == "File unchanged; nothing to do"
    assert kb.wait(kb_id, rid)["modified_at"] == row["modified_at"]
    # the same bytes under another name: another file, one original on disk
    copy = kb.add(kb_id, "copy.txt", original)
    assert copy["resource_id"] != rid and copy["content_hash"] == row["content_hash"]
    storage = Path(server.database_url.removeprefix("sqlite+aiosqlite:///")).parent
    blob = storage / "flowserve-data" / "kb" / row["content_hash"][:2] / row["content_hash"]
    assert blob.read_bytes() == original
    assert (
        kb.call(
            "DELETE", f"/v1/knowledge-bases/{kb_id}/resources/{copy['resource_id']}"
        ).status_code
        == 204
    )
    assert blob.exists()  # still the original of notes.txt

    # new content under the same name: the same resource, indexed again
    replaced = kb.upload(kb_id, "notes.txt", b"Beta notes: the code word is now mango.")
    assert replaced.json()["resource_id"] == rid
    assert kb.wait(kb_id, rid)["status"] == "indexed"
    assert kb.search(kb_id, "pineapple") == []
    assert kb.search(kb_id, "mango")[0]["resource_id"] == rid
    assert not blob.exists()  # nothing refers to the old bytes
    listed = kb.call("GET", f"/v1/knowledge-bases/{kb_id}/resources").json()
    assert [f["resource_path"] for f in listed["data"]] == ["notes.txt"]
    assert listed["next_cursor"] is None and listed["current_cursor"] is None

    assert kb.call("DELETE", f"/v1/knowledge-bases/{kb_id}/resources/{rid}").status_code == 204
    assert kb.search(kb_id, "mango") == []  # left search at once
    assert kb.call("GET", f"/v1/knowledge-bases/{kb_id}/resources/{rid}").status_code == 404
    assert kb.call("GET", f"/v1/knowledge-bases/{kb_id}/resources/{rid}/file").status_code == 404


def test_sync_and_new_chunking_reindex(kb: KB):
    kb_id = kb.create(name="sync")
    done = kb.add(kb_id, "long.txt", (" ".join(f"Fact {i} is true." for i in range(300))).encode())
    chunks = done["dataloader_metadata"]["chunks"]
    synced = kb.call("POST", f"/v1/knowledge-bases/{kb_id}/sync")
    assert synced.status_code == 202 and synced.json()["status"] == "accepted"
    assert isinstance(synced.json()["message"], str)
    assert kb.call("GET", f"/v1/knowledge-bases/{kb_id}").json()["last_synced_at"] is not None

    patched = kb.call(
        "PATCH",
        f"/v1/knowledge-bases/{kb_id}",
        json={"indexing_params": {"chunker_params": {"chunk_size": 300, "chunk_overlap": 0}}},
    )
    assert patched.status_code == 200
    params = patched.json()["indexing_params"]["chunker_params"]
    assert params == {"chunk_size": 300, "chunk_overlap": 0, "chunker_type": "sentence"}
    for _ in range(100):
        row = kb.wait(kb_id, done["resource_id"])
        if row["dataloader_metadata"].get("chunks") not in (None, chunks):
            break
    assert row["status"] == "indexed" and row["dataloader_metadata"]["chunks"] > chunks
    assert all(len(h["text"]) <= 300 for h in kb.search(kb_id, "fact true", top_k=50))


def test_queries_are_never_search_syntax(kb: KB):
    kb_id = kb.create(name="syntax")
    kb.add(kb_id, "t.txt", b'He said "NEAR" twice: AND, OR, NOT* and {in-0} {{x}}.')
    for query in ['"', "NEAR(", "*", "AND", "a OR", "-x", "col:val", "^", "'", "\\", "(((", "NOT"]:
        found = kb.call("POST", f"/v1/knowledge-bases/{kb_id}/search", json={"query": query})
        assert found.status_code == 200, (query, found.text)
    [hit] = kb.search(kb_id, "NEAR(")
    assert hit["text"] == 'He said "NEAR" twice: AND, OR, NOT* and {in-0} {{x}}.'  # as it is


# The store and keyword search themselves, on both databases


def _received(tmp: Path, knowledge: KnowledgeService, name: str, data: bytes) -> Received:
    temp = knowledge.blobs.new_temp()
    temp.write_bytes(data)
    return Received(temp, len(data), hashlib.sha256(data).hexdigest(), name)


async def _store_and_search(url: str, tmp: Path) -> dict[str, Any]:
    settings = Settings(database_url=url, kb_storage_dir=tmp / "kb")
    db = Database(url)
    await db.create_schema()
    try:
        from flowserve.store.keys import KeyStore

        for org in ("acme", "other"):
            await KeyStore(db).create_org(org)
        knowledge = KnowledgeService(db, settings, owner="tester")
        kb = await knowledge.create("acme", CreateKnowledgeBase(name="h"))
        kb_id = kb["knowledge_base_id"]
        rid, changed = await knowledge.upload(
            "acme", kb_id, _received(tmp, knowledge, "h.md", HANDBOOK.encode())
        )
        pending = (await knowledge.file("acme", kb_id, rid)).status
        await knowledge.ingest.index_file(rid)
        indexed = (await knowledge.file("acme", kb_id, rid)).status
        other = await knowledge.create("other", CreateKnowledgeBase(name="x"))
        hits = await knowledge.search("acme", kb_id, SearchRequest(query="refunded parcels"))
        nothing = await knowledge.search("acme", kb_id, SearchRequest(query='NEAR( " * -'))
        theirs = await knowledge.index.search([other["knowledge_base_id"]], "refunds", 10)
        await knowledge.delete("acme", kb_id)
        after = await knowledge.index.search([kb_id], "refunds", 10)
        return {
            "changed": changed,
            "statuses": (pending, indexed),
            "hits": hits,
            "nothing": nothing,
            "theirs": theirs,
            "after": after,
        }
    finally:
        await db.aclose()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_store_and_keyword_search_on_both_databases(dialect, tmp_path, request):
    if dialect == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    found = asyncio.run(_store_and_search(url, tmp_path))
    assert found["changed"] is True
    assert found["statuses"] == ("pending", "indexed")
    texts = [h["text"] for h in found["hits"]]
    # stemmed: "refunded" finds "Refunds", "parcels" the shipping chunk
    assert texts[0].startswith("## Refunds") and any("parcels" in t for t in texts)
    assert found["hits"][0]["score"] == 1.0
    assert all(0 < h["score"] <= 1 for h in found["hits"])
    assert found["nothing"] == [] and found["theirs"] == [] and found["after"] == []


def test_a_provider_key_is_stored_encrypted_and_never_echoed(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}"
    make_org(url, "acme")
    secret = "sk-test-do-not-leak-0123456789"

    async def go() -> tuple[dict[str, Any], str | None]:
        settings = Settings(database_url=url, kb_storage_dir=tmp_path / "kb", secret_key="s")
        db = Database(url)
        try:
            knowledge = KnowledgeService(
                db, settings, "tester", embedding_models=lambda name: name == "fake.embed"
            )
            body = CreateKnowledgeBase.model_validate(
                {
                    "indexing_params": {
                        "embedding_params": {"embedding_model": "fake.embed", "api_key": secret}
                    }
                }
            )
            made = await knowledge.create("acme", body)
            row = await knowledge.store.get_kb("acme", made["knowledge_base_id"])
            return made, row.api_key_encrypted
        finally:
            await db.aclose()

    made, stored = asyncio.run(go())
    assert made["indexing_params"]["embedding_params"] == {
        "embedding_model": "fake.embed",
        "api_key": None,
    }
    assert stored and secret not in stored
    assert secret.encode() not in (tmp_path / "kb.db").read_bytes()
