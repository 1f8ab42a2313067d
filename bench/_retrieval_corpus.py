"""The retrieval benchmark's corpus: this machine's man pages (Debian ``manpages`` and
``manpages-dev``, sections 2 and 3), rendered to text by groff, each with its query (the
NAME line's description, the names dropped) — and PDFs made from them with fpdf2."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

MAN_DIRS = (Path("/usr/share/man/man2"), Path("/usr/share/man/man3"))
CACHE = Path("/tmp/flowserve-retrieval-man.json")  # rendering takes ~1 min; reused
_OVERSTRIKE = re.compile(r".\x08")
_DASH = re.compile(r"\s[-\u2212\u2010\u2013\u2014]\s")


@dataclass(frozen=True, slots=True)
class Page:
    name: str  # e.g. "open.2"
    text: str
    query: str | None  # the NAME description; None: no unique one (a distractor only)


def _source(path: Path) -> bytes | None:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if data.lstrip().startswith(b".so "):  # a link to another page: not a page of its own
        return None
    return data


def render(path: Path) -> tuple[str, str] | None:
    """(name, text) of one page, or None for a link page or one groff cannot render."""
    data = _source(path)
    if data is None:
        return None
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-P-cbou"],
        input=data,
        capture_output=True,
        timeout=30,
        env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
    )
    if done.returncode != 0:
        return None
    text = _OVERSTRIKE.sub("", done.stdout.decode("utf-8", "replace"))
    name = path.name.removesuffix(".gz")
    return name, text


def description(text: str) -> str | None:
    """The NAME section's text after the dash: "open, openat - open a file" → "open a file"."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "NAME")
    except StopIteration:
        return None
    body: list[str] = []
    for line in lines[start + 1 :]:
        if line and not line[0].isspace():
            break
        body.append(line.strip())
    joined = " ".join(w for w in body if w)
    parts = _DASH.split(joined, maxsplit=1)
    if len(parts) != 2 or len(parts[1].split()) < 2:
        return None
    return parts[1].strip()


def load(limit: int | None = None) -> list[Page]:
    """Every distinct page, sorted by name (the first ``limit`` of a fixed shuffle); its query
    is its description if it has one that no other page shares (an ambiguous query has no one
    target), else None."""
    if CACHE.is_file():
        rendered = [tuple(x) for x in json.loads(CACHE.read_text())]
    else:
        paths = sorted(
            p for d in MAN_DIRS for p in d.iterdir() if p.is_file() and not p.is_symlink()
        )
        with ProcessPoolExecutor(2) as pool:
            found = list(pool.map(render, paths, chunksize=32))
        rendered = [r for r in found if r is not None]
        CACHE.write_text(json.dumps(rendered))
    pages, seen = [], set()
    for name, text in rendered:
        if text in seen:  # the same page under another name (a hard link)
            continue
        seen.add(text)
        pages.append(Page(name, text, description(text)))
    counts: dict[str, int] = {}
    for p in pages:
        key = (p.query or "").lower()
        counts[key] = counts.get(key, 0) + 1
    unique = sorted(
        (Page(p.name, p.text, p.query if counts[(p.query or "").lower()] == 1 else None)
         for p in pages),
        key=lambda p: p.name,
    )  # fmt: skip
    if limit is not None:
        import random

        random.Random(13).shuffle(unique)
        unique = sorted(unique[:limit], key=lambda p: p.name)
    return unique


def pdf(pages: list[Page]) -> tuple[bytes, int]:
    """One multi-page PDF of these man pages' text (core font, latin-1); (bytes, pages)."""
    from fpdf import FPDF

    doc = FPDF(format="A4")
    doc.set_auto_page_break(True, margin=15)
    doc.set_font("Courier", size=8)
    for page in pages:
        doc.add_page()
        for line in page.text.splitlines():
            safe = line.encode("latin-1", "replace").decode("latin-1")
            doc.cell(0, 3.5, safe[:110], new_x="LMARGIN", new_y="NEXT")
    return bytes(doc.output()), doc.page_no()
