"""HTML (text only, with lxml) and Markdown (its structure, with markdown-it-py).

HTML: scripts, styles and other non-text elements are dropped; headings ``h1``-``h6`` and
block elements (paragraphs, list items, table rows…) become blocks, whitespace collapsed;
the walk is iterative (``iterwalk``), so deep nesting cannot exhaust the stack. lxml's HTML
parser fetches nothing and expands no external entities.

Markdown: the text is the file's own; markdown-it-py's CommonMark parser (with tables) gives
each top-level block's lines, so a block is the span of its source lines and a heading's
title is its inline text.
"""

from __future__ import annotations

from pathlib import Path

from flowserve.errors import BadFileError
from flowserve.knowledge.parsers import Block, ParsedDocument, TextBuilder, spans
from flowserve.knowledge.parsers.text import decode_file

_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_SKIP = frozenset(
    {"script", "style", "noscript", "template", "head", "svg", "math", "iframe", "object"}
)
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "br", "caption", "dd", "details",
        "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header",
        "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody",
        "td", "tfoot", "th", "thead", "tr", "ul",
    }
)  # fmt: skip


def parse_html(path: Path) -> ParsedDocument:
    import lxml.etree
    import lxml.html

    text = decode_file(path)
    try:
        root = lxml.html.document_fromstring(text)
    except Exception as exc:  # lxml refuses an empty or unparsable document
        raise BadFileError(f"the HTML cannot be read: {str(exc)[:200]}") from None
    builder = TextBuilder("html")
    buffer: list[str] = []
    level = 0  # inside a heading of this level (0: none)

    def flush() -> None:
        builder.add("".join(buffer), heading=level)
        buffer.clear()

    walker = lxml.etree.iterwalk(root, events=("start", "end"))
    for event, element in walker:
        tag = element.tag if isinstance(element.tag, str) else ""
        if event == "start":
            if tag in _SKIP or not tag:  # comments and processing instructions too
                walker.skip_subtree()
                continue
            if tag in _HEADINGS or (tag in _BLOCKS and not level):
                flush()
                level = _HEADINGS.get(tag, level)
            buffer.append(element.text or "")
            continue
        if tag in _HEADINGS or (tag in _BLOCKS and not level):
            flush()
            level = 0 if tag in _HEADINGS else level
        elif tag in _BLOCKS:  # a block inside a heading: a space
            buffer.append(" ")
        buffer.append(element.tail or "")
    flush()
    return builder.build()


def parse_markdown(path: Path) -> ParsedDocument:
    from markdown_it import MarkdownIt

    text = decode_file(path)
    starts = [0]
    for line in text.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    blocks: list[Block] = []
    for token in tokens:
        if token.level != 0 or token.map is None or token.nesting == -1:
            continue
        first, last = token.map
        span = spans(text, starts[first], min(starts[last], len(text)))
        if span is None:
            continue
        heading = int(token.tag[1]) if token.type == "heading_open" else 0
        blocks.append(Block(span[0], span[1], heading))
    return ParsedDocument(text, tuple(blocks), "md")


def heading_title(document: ParsedDocument, block: Block) -> str:
    """A heading block's title: its text without Markdown's ``#`` marks or underline."""
    raw = document.text[block.start : block.end]
    if document.parser == "md":
        lines = raw.split("\n")
        first = lines[0].strip()
        if first.startswith("#"):
            first = first.lstrip("#").strip().rstrip("#").strip()
        return first
    return raw
