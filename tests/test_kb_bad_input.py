"""Every row of the upload checks (contract 3.4): each refusal has its status and body, is
decided before anything is stored, and leaves the KB's other files searchable; a file that
passes the checks but cannot be read (an encrypted PDF) ends in ``error`` with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.kb_helpers import KB, encrypted_pdf, pdf, plain_zip, zip_bomb_docx

LIMIT = 1024 * 1024  # the server's kb_max_file_bytes here: 1 MiB
SUPPORTED = "supported: pdf, docx, txt, md, html, csv, json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("kb-bad"), env={"FLOWSERVE_KB_MAX_FILE_BYTES": str(LIMIT)}
    )
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def kb(server: Server) -> KB:
    return KB(server)


@pytest.fixture(scope="module")
def kb_id(kb: KB) -> str:
    """A KB holding one good file, which every refusal must leave searchable."""
    made = kb.create(name="bad input")
    assert kb.add(made, "good.txt", b"The good file talks about giraffes.")["status"] == "indexed"
    return made


def storage(server: Server) -> Path:
    return Path(server.database_url.removeprefix("sqlite+aiosqlite:///")).parent / "flowserve-data"


def still_fine(kb: KB, kb_id: str, server: Server) -> None:
    assert kb.search(kb_id, "giraffes")[0]["document_name"] == "good.txt"
    listed = kb.call("GET", f"/v1/knowledge-bases/{kb_id}/resources").json()["data"]
    assert [f["resource_path"] for f in listed if f["status"] != "error"][-1] == "good.txt"
    assert list((storage(server) / "kb" / "tmp").iterdir()) == []  # no upload left behind


def corrupt(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "file"] and problem["type"] == "corrupt_file"
    return str(problem["msg"])


@pytest.mark.parametrize(
    ("name", "content", "mime"),
    [
        ("archive.zip", plain_zip(), "application/zip"),
        ("notes.txt", plain_zip(), "application/zip"),  # by its bytes first
        ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png"),
        ("tool.exe", b"MZ\x90\x00" + b"\0" * 64, "application/x-msdownload"),
        ("data.qqq", b"plain words\n", "application/octet-stream"),  # then by its extension
        ("blob", b"\x00\x01\x02\xff" * 8, "application/octet-stream"),
    ],
)
def test_unsupported_types_are_415_naming_the_type(kb, kb_id, server, name, content, mime):
    refused = kb.upload(kb_id, name, content)
    assert refused.status_code == 415
    assert refused.json() == {"detail": f"unsupported file type {mime!r}; {SUPPORTED}"}
    still_fine(kb, kb_id, server)


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("report.pdf", b"just some text", "named .pdf but is not a PDF"),
        ("report.docx", b"%PDF-1.4 not really", "named .docx but holds application/pdf"),
        ("broken.pdf", b"%PDF-1.7\n1 0 obj garbage", "the PDF cannot be read"),
        ("broken.docx", b"PK\x03\x04 no zip follows", "does not open"),
        ("bomb.docx", zip_bomb_docx(), "zip bomb"),
        ("latin1.txt", "caf\u00e9 cr\u00e8me".encode("latin-1"), "not UTF-8"),
        ("nul.md", b"# title\x00\x00", "NUL"),
    ],
)
def test_unreadable_files_are_422_corrupt_file(kb, kb_id, server, name, content, says):
    assert says in corrupt(kb.upload(kb_id, name, content))
    still_fine(kb, kb_id, server)


def test_text_with_a_byte_order_mark_is_accepted(kb, kb_id):
    utf16 = "\ufeffUnicode notes about zebras.".encode("utf-16-le")
    assert kb.add(kb_id, "utf16.txt", utf16)["status"] == "indexed"
    assert kb.search(kb_id, "zebras")[0]["document_name"] == "utf16.txt"


def test_missing_or_empty_file_parts_are_422(kb, kb_id, server):
    url = f"/v1/knowledge-bases/{kb_id}/resources"
    for response, kind in (
        (kb.call("POST", url, files={"other": ("x.txt", b"hello")}), "missing"),
        (kb.call("POST", url, data={"file": "not a file part"}), "missing"),
        (kb.call("POST", url, json={"file": "hello"}), "missing"),
        (kb.upload(kb_id, "empty.txt", b""), "empty_file"),
    ):
        assert response.status_code == 422, response.text
        [problem] = response.json()["detail"]
        assert problem["loc"] == ["body", "file"] and problem["type"] == kind
    still_fine(kb, kb_id, server)


def test_files_over_the_limit_are_413_by_length_and_as_they_arrive(kb, kb_id, server):
    big = b"a" * (LIMIT + 1)
    refused = kb.upload(kb_id, "big.txt", big)
    assert refused.status_code == 413
    assert refused.json() == {"detail": "file exceeds the 1 MiB limit"}
    assert kb.add(kb_id, "exact.txt", b"b" * LIMIT)["status"] == "indexed"  # the limit itself

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="s.txt"\r\n\r\n'
        for _ in range(40):
            yield b"c" * 65536
        yield b"\r\n--xyz--\r\n"

    streamed = httpx.post(
        f"{kb.base}/v1/knowledge-bases/{kb_id}/resources",
        content=chunked(),
        headers={**kb.headers, "content-type": "multipart/form-data; boundary=xyz"},
        timeout=60,
    )
    assert (
        streamed.status_code == 413 and streamed.json()["detail"] == "file exceeds the 1 MiB limit"
    )
    still_fine(kb, kb_id, server)


def test_a_name_that_is_a_path_is_stored_without_directories(kb, kb_id, server):
    for name, stored in (
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini.txt", "system.ini.txt"),
        ("/abs/evil\x1b[31m\x7f.md", "evil[31m.md"),
        ("..", "upload"),
        ("x" * 300 + ".txt", "x" * 251 + ".txt"),
    ):
        row = kb.add(kb_id, name, f"contents of {stored}".encode())
        assert row["status"] == "indexed" and row["resource_path"] == stored
    root = storage(server)
    assert not (root.parent.parent / "etc").exists()
    # originals only by content hash, under the storage directory
    names = {p.name for p in (root / "kb").rglob("*") if p.is_file()}
    assert names and all(len(n) == 64 for n in names)


def test_an_encrypted_pdf_is_accepted_then_fails_with_the_reason(kb, kb_id, server):
    sent = kb.upload(kb_id, "locked.pdf", encrypted_pdf("Secret salaries are listed here."))
    assert sent.status_code == 202
    row = kb.wait(kb_id, sent.json()["resource_id"])
    assert row["status"] == "error" and "encrypted" in row["error"]
    assert row["indexed_at"] is None
    assert kb.search(kb_id, "salaries") == []
    stats = kb.call("GET", f"/v1/knowledge-bases/{kb_id}").json()
    assert stats["total_error_files"] >= 1
    still_fine(kb, kb_id, server)
    # sync retries error files: still encrypted, still an error, with its reason
    assert kb.call("POST", f"/v1/knowledge-bases/{kb_id}/sync").status_code == 202
    again = kb.wait(kb_id, sent.json()["resource_id"])
    assert again["status"] == "error" and "encrypted" in again["error"]


def test_a_pdf_without_text_fails_with_the_reason(kb, kb_id):
    row = kb.add(kb_id, "blank.pdf", pdf([""]))
    assert row["status"] == "error" and "no extractable text" in row["error"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": ""}, ["body", "name"]),
        ({"nme": "typo"}, ["body", "nme"]),
        ({"connection_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6"}, ["body", "connection_id"]),
        ({"website_sources": [{"source_type": "sitemap"}]}, ["body", "website_sources"]),
        ({"indexing_params": {"ocr": True}}, ["body", "indexing_params", "ocr"]),
        ({"indexing_params": {"ocr": "true"}}, ["body", "indexing_params", "ocr"]),
        (
            {"indexing_params": {"chunker_params": {"chunk_size": 100, "chunk_overlap": 100}}},
            ["body", "indexing_params", "chunker_params"],
        ),
        (
            {"indexing_params": {"chunker_params": {"chunk_size": 9000}}},
            ["body", "indexing_params", "chunker_params", "chunk_size"],
        ),
        (
            {"indexing_params": {"embedding_params": {"embedding_model": "acme.nope"}}},
            ["body", "indexing_params", "embedding_params", "embedding_model"],
        ),
    ],
)
def test_bad_knowledge_base_bodies_are_422_naming_the_field(kb, body, loc):
    refused = kb.call("POST", "/v1/knowledge-bases", json=body)
    assert refused.status_code == 422, refused.text
    assert loc in [d["loc"] for d in refused.json()["detail"]]


def test_bad_search_bodies_and_strategies_are_422(kb, kb_id):
    url = f"/v1/knowledge-bases/{kb_id}/search"
    for body, loc in (
        ({"query": ""}, ["body", "query"]),
        ({"query": "x" * 4001}, ["body", "query"]),
        ({"query": "x", "top_k": 0}, ["body", "top_k"]),
        ({"query": "x", "rerank": True}, ["body", "rerank"]),
        ({"query": "x", "query_strategy": "semantic"}, ["body", "query_strategy"]),
        ({"query": "x", "query_strategy": "hybrid"}, ["body", "query_strategy"]),
    ):
        refused = kb.call("POST", url, json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert loc in [d["loc"] for d in refused.json()["detail"]]
    assert (
        kb.call("POST", url, json={"query": "giraffes", "query_strategy": "keyword"}).status_code
        == 200
    )
