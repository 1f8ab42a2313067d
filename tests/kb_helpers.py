"""Real files for the knowledge-base tests, made with the libraries a user's tools use
(fpdf2 for PDFs, pypdf to encrypt one, python-docx, zipfile), and HTTP helpers."""

from __future__ import annotations

import io
import time
import zipfile
from typing import Any

import httpx

from tests.conftest import Server


def pdf(pages: list[str]) -> bytes:
    from fpdf import FPDF

    doc = FPDF()
    doc.set_font("Helvetica", size=12)
    for text in pages:
        doc.add_page()
        doc.multi_cell(0, 8, text)
    return bytes(doc.output())


def encrypted_pdf(text: str, password: str = "s3cret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf([text]))))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx(items: list[tuple[str, str]]) -> bytes:
    """``items``: (style, text) with style "h1", "h2" or "p"."""
    import docx as python_docx

    document = python_docx.Document()
    for style, text in items:
        if style.startswith("h"):
            document.add_heading(text, level=int(style[1]))
        else:
            document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_bomb_docx() -> bytes:
    """A DOCX whose document part inflates 64 MiB of zeros from about 64 KiB."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", b"\0" * (64 * 1024 * 1024))
    return out.getvalue()


def plain_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes.txt", "hello")
    return out.getvalue()


class KB:
    """A server's knowledge-base API with one key."""

    def __init__(self, server: Server, key: str | None = None) -> None:
        self.base = server.base_url
        self.headers = server.auth(key or server.private_key)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.base + path, headers=self.headers, timeout=60, **kwargs)

    def create(self, **body: Any) -> str:
        made = self.call("POST", "/v1/knowledge-bases", json=body)
        assert made.status_code == 201, made.text
        return str(made.json()["knowledge_base_id"])

    def upload(self, kb_id: str, name: str, content: bytes) -> httpx.Response:
        return self.call(
            "POST", f"/v1/knowledge-bases/{kb_id}/resources", files={"file": (name, content)}
        )

    def add(self, kb_id: str, name: str, content: bytes) -> dict[str, Any]:
        """Upload and wait until the file is indexed or in error; the file."""
        sent = self.upload(kb_id, name, content)
        assert sent.status_code == 202, sent.text
        return self.wait(kb_id, sent.json()["resource_id"])

    def wait(self, kb_id: str, resource_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.call("GET", f"/v1/knowledge-bases/{kb_id}/resources/{resource_id}")
            assert got.status_code == 200, got.text
            if got.json()["status"] in ("indexed", "error") or time.monotonic() > deadline:
                return dict(got.json())
            time.sleep(0.05)

    def search(self, kb_id: str, query: str, **body: Any) -> list[dict[str, Any]]:
        found = self.call(
            "POST", f"/v1/knowledge-bases/{kb_id}/search", json={"query": query, **body}
        )
        assert found.status_code == 200, found.text
        return list(found.json()["results"])
