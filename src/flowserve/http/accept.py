"""Content negotiation: the ``Accept`` header as RFC 9110 (12.5.1) defines it.

The header is a comma-separated list of media ranges (``type/subtype``, ``type/*`` or
``*/*``, case-insensitive), each with optional parameters and a weight ``q`` (0 to 1, at most
three decimals; ``q=0`` means "not acceptable"). Several ``Accept`` lines make one list. An
entry that does not follow the grammar is skipped; the others still count. Parameters other
than ``q`` (and the extensions after it) are read past but not compared: the two answers we
choose between have fixed parameters.

The one decision taken on it, :func:`prefers_event_stream`: an answer that could go either
way (an error before the first byte, contract 2.2) is SSE when the client gives
``text/event-stream`` a weight above 0 and at least as high as ``application/json``'s; on a
tie, only when ``text/event-stream`` itself is named (so ``application/json,
text/event-stream``, which fetch-event-source makes of a client's own Accept plus its own, is
SSE, while ``*/*``, curl's and httpx's default, stays JSON). Everything else is JSON, and so
is an ``Accept`` longer than ``MAX_ACCEPT`` (no client sends one; parsing it would cost the
server what it cost the sender nothing to write).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

__all__ = [
    "ANY",
    "EXACT",
    "MAX_ACCEPT",
    "NONE",
    "SUBTYPE_WILDCARD",
    "MediaRange",
    "parse",
    "prefers_event_stream",
    "quality",
]

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_RANGE = re.compile(rf"[ \t]*({_TOKEN})/({_TOKEN})[ \t]*")
# One ``;`` parameter, possibly empty (RFC 9110 5.6.6 allows ``;;``); value token or quoted.
_PARAM = re.compile(rf';[ \t]*(?:({_TOKEN})=({_TOKEN}|"(?:[^"\\]|\\.)*"))?[ \t]*')
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
# To skip a malformed entry: up to the next comma outside a quoted string (one that is
# never closed runs to the end of the header).
_REST = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*"?)*')

# How specifically a range matches a media type; the most specific one gives its weight.
NONE, ANY, SUBTYPE_WILDCARD, EXACT = -1, 0, 1, 2

MAX_ACCEPT = 4096  # characters; a browser's longest is under 200
EVENT_STREAM = "text/event-stream"
JSON = "application/json"


class MediaRange(NamedTuple):
    type: str  # lower case; "*" only in "*/*"
    subtype: str  # lower case, or "*"
    q: int  # thousandths: 0 to 1000


def _entry(header: str, pos: int) -> tuple[MediaRange | None, int]:
    """The entry starting at ``pos`` (None if malformed) and where it ends."""
    match = _RANGE.match(header, pos)
    if match is None:
        return None, _REST.match(header, pos).end()  # type: ignore[union-attr]
    type_, subtype = match.group(1).lower(), match.group(2).lower()
    pos = match.end()
    q = 1000
    seen_q = False
    while (param := _PARAM.match(header, pos)) is not None:
        pos = param.end()
        name, value = param.group(1), param.group(2)
        # Parameters after q are accept-extensions; only the first q is the weight.
        if name is not None and name.lower() == "q" and not seen_q:
            seen_q = True
            if _QVALUE.fullmatch(value) is None:
                return None, _REST.match(header, pos).end()  # type: ignore[union-attr]
            q = round(float(value) * 1000)
    if (pos < len(header) and header[pos] != ",") or (type_ == "*" and subtype != "*"):
        return None, _REST.match(header, pos).end()  # type: ignore[union-attr]
    return MediaRange(type_, subtype, q), pos


def parse(header: str) -> list[MediaRange]:
    """The media ranges of an ``Accept`` value, in order, malformed entries left out."""
    ranges: list[MediaRange] = []
    pos = 0
    while pos < len(header):
        if header[pos] in ", \t":
            pos += 1
            continue
        media_range, pos = _entry(header, pos)
        if media_range is not None:
            ranges.append(media_range)
    return ranges


def quality(ranges: list[MediaRange], media_type: str) -> tuple[int, int]:
    """``(q, specificity)`` of the most specific range matching ``media_type`` (the highest
    q among equally specific ones); ``(0, NONE)`` when none does."""
    type_, subtype = media_type.split("/")
    best_q, best = 0, NONE
    for r in ranges:
        if r.type == type_ and r.subtype == subtype:
            level = EXACT
        elif r.type == type_ and r.subtype == "*":
            level = SUBTYPE_WILDCARD
        elif r.type == "*":
            level = ANY
        else:
            continue
        if level > best or (level == best and r.q > best_q):
            best_q, best = r.q, level
    return best_q, best


def prefers_event_stream(header: str) -> bool:
    """Whether an answer that may be SSE or JSON should be SSE (the rule is in the module's
    docstring)."""
    return len(header) <= MAX_ACCEPT and _prefers_event_stream(header)


@lru_cache(maxsize=256)  # clients send few distinct values; bounded against those who don't
def _prefers_event_stream(header: str) -> bool:
    ranges = parse(header)
    sse, sse_level = quality(ranges, EVENT_STREAM)
    json, _ = quality(ranges, JSON)
    return sse > 0 and (sse > json or (sse == json and sse_level == EXACT))
