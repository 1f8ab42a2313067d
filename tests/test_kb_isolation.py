"""Isolation (contract 3.1, 3.4, 3.5): every knowledge-base route refuses another org's ids
with the same 404 as unknown ones, and changes nothing of theirs; a public key is 403 and no
key 401 everywhere; the per-user documents routes are 401 for another org's key. A user's
documents bucket shows its own files only.

No flow can have a ``files`` node yet (that node type comes next), so the documents routes
are tested over HTTP up to their 404, and the buckets through the service."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from flowserve.config import Settings
from flowserve.errors import BadFileError, NotFoundError, UnsupportedMediaTypeError
from flowserve.knowledge.search import Hit
from flowserve.knowledge.service import KnowledgeService
from flowserve.knowledge.upload import Received
from flowserve.store.database import Database
from tests.conftest import Server, make_org, start_server, stop_server
from tests.kb_helpers import KB, encrypted_pdf, zip_bomb_docx

NOBODY = "00000000-0000-4000-8000-000000000000"
FLOW = "id: notes\ninputs: {in-0: {}}\nnodes:\n  t: {type: template, template: '{in-0}'}\noutputs: {out-0: t}\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("kb-iso"))
    try:
        assert srv.publish(FLOW).status_code == 201
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def acme(server: Server) -> tuple[KB, str, str]:
    """acme's KB with one indexed file: (api, kb id, resource id)."""
    api = KB(server)
    kb_id = api.create(name="acme private")
    row = api.add(kb_id, "plans.txt", b"Acme plans to launch the rocket in May.")
    return api, kb_id, row["resource_id"]


@pytest.fixture(scope="module")
def rival(server: Server) -> tuple[KB, str, str]:
    _, private = make_org(server.database_url, "rival")
    api = KB(server, private)
    kb_id = api.create(name="rival's")
    row = api.add(kb_id, "r.txt", b"Rival notes.")
    return api, kb_id, row["resource_id"]


def kb_routes(kb_id: str, rid: str) -> list[tuple[str, str, dict[str, Any]]]:
    base = f"/v1/knowledge-bases/{kb_id}"
    return [
        ("GET", base, {}),
        ("PATCH", base, {"json": {"name": "taken over"}}),
        ("DELETE", base, {}),
        ("POST", f"{base}/sync", {}),
        ("GET", f"{base}/resources", {}),
        ("POST", f"{base}/resources", {"files": {"file": ("x.txt", b"planted")}}),
        ("GET", f"{base}/resources/{rid}", {}),
        ("DELETE", f"{base}/resources/{rid}", {}),
        ("GET", f"{base}/resources/{rid}/file", {}),
        ("POST", f"{base}/search", {"json": {"query": "rocket"}}),
    ]


def test_another_orgs_knowledge_base_is_the_same_404_as_an_unknown_one(acme, rival):
    api, kb_id, rid = acme
    them, _, _ = rival
    for method, path, kwargs in kb_routes(kb_id, rid) + kb_routes(NOBODY, rid):
        refused = them.call(method, path, **kwargs)
        assert refused.status_code == 404, (method, path, refused.text)
        assert refused.json() == {"detail": "knowledge base not found"}
    # nothing of acme's changed, and its KB is not in their list
    assert api.call("GET", f"/v1/knowledge-bases/{kb_id}").json()["name"] == "acme private"
    assert api.search(kb_id, "rocket")[0]["resource_id"] == rid
    files = api.call("GET", f"/v1/knowledge-bases/{kb_id}/resources").json()["data"]
    assert [f["resource_path"] for f in files] == ["plans.txt"]
    listed = them.call("GET", "/v1/knowledge-bases").json()
    assert [k["name"] for k in listed] == ["rival's"]


def test_another_orgs_resource_under_ones_own_knowledge_base_is_404(acme, rival):
    _, _, acme_rid = acme
    them, their_kb, _ = rival
    for method, path, kwargs in kb_routes(their_kb, acme_rid)[6:9]:
        refused = them.call(method, path, **kwargs)
        assert refused.status_code == 404 and refused.json() == {"detail": "resource not found"}


def test_public_keys_are_403_and_missing_or_bad_keys_401_on_every_route(server, acme):
    _, kb_id, rid = acme
    docs = "/documents/acme/notes/doc-0/user-1"
    routes = [
        ("GET", "/v1/knowledge-bases", {}),
        ("POST", "/v1/knowledge-bases", {"json": {}}),
        *kb_routes(kb_id, rid),
        ("GET", docs, {}),
        ("POST", docs, {"files": {"file": ("x.txt", b"hi")}}),
        ("DELETE", docs, {"params": {"filename": "x.txt"}}),
        ("GET", f"{docs}/file", {"params": {"filename": "x.txt"}}),
    ]
    public = KB(server, server.public_key)
    nobody = KB(server, "fs-priv-nosuchkey000-0000000000000000000000000000")
    for method, path, kwargs in routes:
        refused = public.call(method, path, **kwargs)
        assert refused.status_code == 403, (method, path, refused.text)
        assert "private API key" in refused.json()["detail"]
        assert nobody.call(method, path, **kwargs).status_code == 401
        bare = httpx.request(method, server.base_url + path, timeout=30, **kwargs)
        assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"


def test_documents_routes_check_org_flow_node_and_user_id(server, rival):
    them, _, _ = rival
    mine = KB(server)
    base = "/documents/acme/notes"
    # another org's key on acme's path: 401, as for any wrong key
    for method, path, kwargs in (
        ("GET", f"{base}/doc-0/u1", {}),
        ("POST", f"{base}/doc-0/u1", {"files": {"file": ("x.txt", b"hi")}}),
        ("DELETE", f"{base}/doc-0/u1", {"params": {"filename": "x.txt"}}),
        ("GET", f"{base}/doc-0/u1/file", {"params": {"filename": "x.txt"}}),
    ):
        assert them.call(method, path, **kwargs).status_code == 401
        # unknown flow, then a node that is not a files node: 404 naming it
        unknown = mine.call(method, path.replace("/notes/", "/nope/"), **kwargs)
        assert unknown.status_code == 404 and unknown.json() == {"detail": "flow 'nope' not found"}
        wrong = mine.call(method, path.replace("doc-0", "t"), **kwargs)
        assert wrong.status_code == 404
        assert wrong.json() == {"detail": "node 't' is not a files node of flow 'notes'"}
    for user_id in ("a%0Ab", "x" * 257):
        bad = mine.call("GET", f"{base}/doc-0/{user_id}")
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["path", "user_id"]
    empty = mine.call("GET", f"{base}/doc-0/")
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["path", "user_id"]
    missing = mine.call("DELETE", f"{base}/doc-0/u1")
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["query", "filename"]


# Buckets through the service: a flow whose node doc-0 is a files node


class _Flows:
    async def get(self, org_id: str, flow_id: str) -> Any:
        if flow_id != "chat":
            raise NotFoundError(f"flow {flow_id!r} not found")
        nodes = {"doc-0": SimpleNamespace(spec=SimpleNamespace(type="files"))}
        return SimpleNamespace(flow=SimpleNamespace(nodes=nodes))


def _file(knowledge: KnowledgeService, name: str, data: bytes) -> Received:
    temp = knowledge.blobs.new_temp()
    temp.write_bytes(data)
    return Received(temp, len(data), hashlib.sha256(data).hexdigest(), name)


async def _buckets(tmp: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp / 'docs.db'}"
    db = Database(url)
    await db.create_schema()
    settings = Settings(database_url=url, kb_storage_dir=tmp / "kb")
    knowledge = KnowledgeService(db, settings, "tester", flows=_Flows())  # type: ignore[arg-type]
    try:
        from flowserve.store.keys import KeyStore

        for org in ("acme", "rival"):
            await KeyStore(db).create_org(org)
        alice = await knowledge.bucket("acme", "chat", "doc-0", "alice-c1", create=True)
        bob = await knowledge.bucket("acme", "chat", "doc-0", "bob-c1", create=True)
        twin = await knowledge.bucket("rival", "chat", "doc-0", "alice-c1", create=True)
        assert alice and bob and twin
        assert alice.row.id != twin.row.id  # the same ids in another org: another bucket
        assert await knowledge.bucket("acme", "chat", "doc-0", "carol") is None
        assert await knowledge.documents(None) == []
        with pytest.raises(NotFoundError, match="not a files node"):
            await knowledge.bucket("acme", "chat", "in-0", "alice-c1")

        made = await knowledge.add_document(alice, _file(knowledge, "a.txt", b"Apples are red."))
        assert made["status"] == "indexed" and made["filename"] == "a.txt"
        await knowledge.add_document(bob, _file(knowledge, "b.txt", b"Bananas are yellow."))
        await knowledge.add_document(bob, _file(knowledge, "a.txt", b"Bob's own a.txt: pears."))
        assert await knowledge.documents(alice) == ["a.txt"]
        assert await knowledge.documents(bob) == ["b.txt", "a.txt"]  # oldest first
        assert await knowledge.documents(twin) == []

        assert await knowledge.index.search([bob.row.id], "apples", 10) == []
        [hit] = await knowledge.index.search([alice.row.id], "apples", 10)
        [cited] = await knowledge.citations([hit], node_id="doc-0", bucket=alice)
        assert cited["source"] == "user_document" and cited["knowledge_base_id"] is None
        assert cited["url"] == "/documents/acme/chat/doc-0/alice-c1/file?filename=a.txt"
        assert isinstance(hit, Hit) and hit.text == "Apples are red."
        theirs = await knowledge.document(bob, "a.txt")
        assert knowledge.original(theirs).read_bytes() == b"Bob's own a.txt: pears."

        # a file that cannot be read is refused and the one it would replace stays
        for name, data, error in (
            ("a.txt", zip_bomb_docx(), BadFileError),
            ("a.txt", encrypted_pdf("hidden"), BadFileError),
            ("a.txt", b"\x89PNG\r\n\x1a\n....", UnsupportedMediaTypeError),
        ):
            with pytest.raises(error):
                await knowledge.add_document(alice, _file(knowledge, name, data))
        assert (await knowledge.index.search([alice.row.id], "apples", 10))[0].text == hit.text
        assert list((tmp / "kb" / "tmp").iterdir()) == []

        await knowledge.delete_document(alice, "a.txt")
        assert await knowledge.documents(alice) == []
        assert await knowledge.documents(bob) == ["b.txt", "a.txt"]
        with pytest.raises(NotFoundError):
            await knowledge.delete_document(alice, "a.txt")
        # a bucket is no knowledge base: the KB routes' lookups do not find it
        with pytest.raises(NotFoundError, match="knowledge base not found"):
            await knowledge.get("acme", bob.row.id)
        assert await knowledge.list_kbs("acme", None, True, 100) == ([], None)
    finally:
        await db.aclose()


def test_a_users_bucket_holds_only_its_own_files(tmp_path):
    asyncio.run(_buckets(tmp_path))
