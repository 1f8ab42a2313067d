"""Browser access (CORS), decided per API key.

Public keys live in browser code; each lists the origins allowed to use it
(``allowed_origins``; empty = server-to-server only, ``*`` = any site). Starlette's
CORSMiddleware cannot decide per key, so the decision is split in two:

- **Preflight** (``OPTIONS`` with ``Access-Control-Request-Method``) carries no Authorization
  header, so it cannot know the key. :class:`Preflight` answers it permissively for the API
  routes: the Origin echoed, the route's methods, the headers clients send (authorization,
  content-type, last-event-id, accept) and a Max-Age. A preflight grants nothing by itself.
- **The actual request** is decided once the key is verified (:func:`check_origin`, before
  any run starts): no ``Origin`` header (server-to-server) is allowed; an origin the key lists
  (or any, with ``*``) is allowed and the response, streams included, carries
  ``Access-Control-Allow-Origin: <origin>`` and ``Vary: Origin``; any other origin is refused
  with 403 naming it. A private key is refused from every browser origin it does not list:
  private keys must never sit in browser code.

Error responses to a request with an Origin echo it as well (``flowserve.http.errors``), so
that browser code can read why it was refused, and fetch-event-source sees the status instead
of a network error it would retry forever. That discloses nothing: error bodies carry no data,
and the API takes no cookies (never ``Allow-Credentials``), so there is no ambient authority
for CORS to guard. What ``allowed_origins`` guards is a key's use from other sites' pages.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable

from starlette.types import ASGIApp, Receive, Scope, Send

from flowserve.auth import Principal
from flowserve.errors import ForbiddenError
from flowserve.http.access import note

ALLOW_HEADERS = "authorization, content-type, last-event-id, accept"
MAX_AGE = "600"
# The routes a browser may call; anything else gets no preflight answer (405 from routing).
API_PREFIXES = ("/stream_exported_flow", "/run_deployed_flow", "/inference/v0/", "/v1/orgs/")
_ORIGIN = re.compile(r"^(null|[a-z][a-z0-9+.-]*://[^/\s]{1,253})$")


def normalize(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def check_origin(principal: Principal, origin: str | None) -> list[tuple[bytes, bytes]]:
    """The CORS headers for a response to ``origin``; ForbiddenError (403) if the key does not
    allow it. No Origin header: allowed, no headers."""
    if origin is None:
        return []
    allowed = principal.allowed_origins
    if "*" not in allowed:
        wanted = normalize(origin)
        if not _ORIGIN.match(wanted) or wanted not in {normalize(a) for a in allowed}:
            shown = origin[:200]
            if principal.is_private and not allowed:
                raise ForbiddenError(
                    f"origin {shown!r} refused: private API keys may not be used from a browser"
                )
            raise ForbiddenError(f"origin {shown!r} is not allowed for this API key")
    return response_headers(origin)


def response_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", b"retry-after"),
        (b"vary", b"Origin"),
    ]


def error_headers(origin: str) -> dict[str, str]:
    """For an error answer to a browser: readable whatever the key (see the module doc)."""
    return {k.decode(): v.decode("latin-1") for k, v in response_headers(origin)}


def _methods(path: str) -> bytes:
    if path.endswith("/metadata"):
        return b"GET"
    if path.startswith("/v1/orgs/"):
        return b"GET, POST"
    return b"POST"


class Preflight:
    """Pure ASGI: answers CORS preflights for the API routes; everything else passes through
    untouched (one check of the method per request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine function: what passes gets the next layer's coroutine itself, so
        # no frame of this layer stays alive for as long as a stream is open.
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            return self.app(scope, receive, send)
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        path: str = scope["path"]
        if (
            origin is None
            or b"access-control-request-method" not in headers
            or not path.startswith(API_PREFIXES)
            or not _ORIGIN.match(normalize(origin.decode("latin-1")))
        ):
            return self.app(scope, receive, send)
        return self._answer(scope, send, origin, path)

    @staticmethod
    async def _answer(scope: Scope, send: Send, origin: bytes, path: str) -> None:
        note(scope, status=204)
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    (b"access-control-allow-origin", origin),
                    (b"access-control-allow-methods", _methods(path)),
                    (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
                    (b"access-control-max-age", MAX_AGE.encode()),
                    (
                        b"vary",
                        b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                    ),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
