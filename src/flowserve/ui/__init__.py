"""A flow's chat and form pages: plain files shipped in this package, served by flowserve
itself (``flowserve.http.ui``), with no build step and no third-party code.

``static/index.html`` is the one page, for both modes; its JavaScript modules read the org,
the flow and the mode from the page's address, the API key from the address's fragment or
the tab's ``sessionStorage``, and then speak only the public API: the flow's interface, the
v0 run stream, the stop route. Everything the API or a model sends is put into the page as
text (``textContent``), never parsed as HTML.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib.resources import files

PAGE = "index.html"
# Served under /ui/assets/ (one route each, flowserve.http.routes). Each name has a dot, which
# no flow id has, so /ui/assets/<name> is never a page of an org called "assets".
ASSETS = (
    "api.js",
    "app.css",
    "app.js",
    "chat.js",
    "dom.js",
    "form.js",
    "graph.js",
    "icon.svg",
    "run.js",
    "sources.js",
)
_MEDIA = {
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str  # a strong validator: the content's hash


@functools.cache
def asset(name: str) -> Asset:
    """One of the shipped files (PAGE or one of ASSETS), read once."""
    assert name == PAGE or name in ASSETS, name
    body = (files(__name__) / "static" / name).read_bytes()
    media_type = _MEDIA[name[name.rindex(".") :]]
    return Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
