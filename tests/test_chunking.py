"""Chunking by structure (flowserve.knowledge.chunking) over what the parsers give: headings
start sections no chunk crosses, chunks overlap by whole sentences, every chunk's offsets
point at the document's text, and for text formats that text is the file's own."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from flowserve.knowledge import chunking, parsers
from flowserve.knowledge.parsers import Block, ParsedDocument
from tests.kb_helpers import docx, pdf

SENTENCES = " ".join(f"Sentence number {i} is here." for i in range(40))


def parse(tmp_path: Path, name: str, content: bytes | str, parser: str) -> ParsedDocument:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return parsers.parse(parser, path)


def test_markdown_headings_make_sections_and_offsets_point_at_the_file(tmp_path):
    source = (
        "# Handbook\n\nWelcome to the handbook.\n\n"
        "## Refunds\n\nRefunds take five days. Ask billing.\n\n"
        "### Exceptions\n\nSale items are final.\n\n"
        "## Shipping\n\nWe ship worldwide.\n"
    )
    document = parse(tmp_path, "hb.md", source, "md")
    assert document.text == source  # the original, so offsets are the file's
    chunks = chunking.chunk(document, size=200, overlap=50)
    assert [c.heading for c in chunks] == [
        ("Handbook",),
        ("Handbook", "Refunds"),
        ("Handbook", "Refunds", "Exceptions"),
        ("Handbook", "Shipping"),
    ]
    for c in chunks:
        assert source[c.start : c.end] == c.text
    assert chunks[1].text == "## Refunds\n\nRefunds take five days. Ask billing."
    assert chunks[3].heading_path == "Handbook > Shipping"
    assert [c.index for c in chunks] == [0, 1, 2, 3]


def test_sentence_chunks_respect_the_size_and_overlap_by_whole_sentences(tmp_path):
    document = parse(tmp_path, "long.txt", SENTENCES, "txt")
    chunks = chunking.chunk(document, size=120, overlap=40)
    assert len(chunks) > 5
    for c in chunks:
        assert len(c.text) <= 120
        assert SENTENCES[c.start : c.end] == c.text
        assert c.text.endswith(".") and c.text[0].isupper()  # whole sentences
    for before, after in itertools.pairwise(chunks):
        shared = SENTENCES[after.start : before.end]
        assert after.start < before.end, "consecutive chunks overlap"
        assert 0 < len(shared) <= 40
        assert after.end > before.end, "each chunk brings new text"
    covered = "".join(SENTENCES[c.start : c.end] for c in chunks)
    assert all(f"number {i} " in covered for i in range(40))


def test_naive_chunks_are_fixed_windows(tmp_path):
    text = "abcdefghij" * 30
    document = parse(tmp_path, "w.txt", text, "txt")
    chunks = chunking.chunk(document, size=100, overlap=25, kind="naive")
    assert [c.start for c in chunks] == [0, 75, 150, 225]
    assert all(text[c.start : c.end] == c.text for c in chunks)
    assert [len(c.text) for c in chunks] == [100, 100, 100, 75]


def test_a_sentence_longer_than_a_chunk_is_cut_at_spaces(tmp_path):
    words = " ".join(["word"] * 200)  # one sentence of 999 characters
    document = parse(tmp_path, "w.txt", words, "txt")
    chunks = chunking.chunk(document, size=100, overlap=0)
    assert all(len(c.text) <= 100 and not c.text.startswith(" ") for c in chunks)
    assert all(c.text.replace("word", "").strip() == "" for c in chunks)  # never mid-word
    assert sum(c.text.count("word") for c in chunks) == 200


def test_pdf_chunks_keep_their_page(tmp_path):
    document = parse(
        tmp_path, "a.pdf", pdf(["Cats sleep a lot.", "Refunds take five days."]), "pdf"
    )
    assert document.pages == 2
    chunks = chunking.chunk(document, size=20, overlap=0)
    pages = {c.text: c.page for c in chunks}
    assert pages == {"Cats sleep a lot.": 1, "Refunds take five": 2, "days.": 2}
    for c in chunks:
        assert document.text[c.start : c.end] == c.text


def test_docx_and_html_headings_become_paths(tmp_path):
    document = parse(
        tmp_path,
        "g.docx",
        docx([("h1", "Guide"), ("p", "Intro."), ("h2", "Returns"), ("p", "Within 30 days.")]),
        "docx",
    )
    chunks = chunking.chunk(document)
    assert [(c.heading, c.text) for c in chunks] == [
        (("Guide",), "Guide\n\nIntro."),
        (("Guide", "Returns"), "Returns\n\nWithin 30 days."),
    ]
    html = (
        "<html><head><title>t</title><style>p{}</style></head><body><h1>Policies</h1>"
        "<div><p>Be kind.</p><script>alert(1)</script><h2>Refunds <small>(new)</small></h2>"
        "<ul><li>Five days.</li><li>Ask billing.</li></ul></div></body></html>"
    )
    document = parse(tmp_path, "p.html", html, "html")
    assert "alert" not in document.text and "p{}" not in document.text
    chunks = chunking.chunk(document)
    assert [c.heading for c in chunks] == [("Policies",), ("Policies", "Refunds (new)")]
    assert chunks[1].text == "Refunds (new)\n\nFive days.\n\nAsk billing."


def test_csv_rows_are_never_split(tmp_path):
    rows = "\n".join(f"{i},item {i},{i * 3}" for i in range(100))
    document = parse(tmp_path, "t.csv", rows, "csv")
    chunks = chunking.chunk(document, size=60, overlap=20)
    for c in chunks:
        assert all(line.count(",") == 2 for line in c.text.split("\n"))


def test_bad_parameters_are_refused():
    document = ParsedDocument("abc", (Block(0, 3),), "txt")
    with pytest.raises(ValueError):
        chunking.chunk(document, size=10, overlap=10)
