"""The error answers in the OpenAPI document.

Routes raise flowserve errors rather than return them, and ``flowserve.http.errors`` maps
them to statuses in one place, so FastAPI cannot see which statuses a route may answer. They
are declared here, once, from what each kind of route checks before its first byte (contract
2.2), so that clients generated from ``/openapi.json`` and the schema fuzzer
(``tests/test_fuzz_http.py``) know every status the server sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "description": "a message, a list of {loc, msg, type} (422), or the failed run (502)",
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
                {"type": "object"},
            ],
        }
    },
}
RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}
}
REASONS = {
    401: "no, malformed, unknown or revoked API key, or a key of another org",
    403: "the key may not do this (a public key publishing), or the browser origin is not allowed",
    404: "unknown flow, version or run",
    413: "request body too large",
    414: "URL too long",
    422: "invalid parameters or body",
    429: "rate or per-key concurrency limit",
    431: "request headers too large",
    502: "the run failed (detail names the error, node and run)",
    503: "the server is at its run limit, or shutting down",
}
EVERY = (414, 431)  # the size guard answers before routing
AUTHENTICATED = (*EVERY, 401, 403, 422, 429)
RUN = (*AUTHENTICATED, 404, 413, 503)


def statuses(method: str, path: str) -> tuple[int, ...]:
    """The error statuses a route may answer."""
    if path == "/healthz":
        return (*EVERY, 503)
    if path in ("/metrics", "/openapi.json", "/docs", "/redoc"):  # no key needed
        return EVERY
    if method == "post" and path.startswith("/v1/"):
        return (*AUTHENTICATED, 413)
    if method == "post" and "/stop/" in path:
        return (*AUTHENTICATED, 404)
    if method == "post":
        return (*RUN, 502) if path == "/run_deployed_flow" else RUN
    return (*AUTHENTICATED, 404) if "/metadata" in path else AUTHENTICATED


def _error(status: int) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Error"}
    response: dict[str, Any] = {
        "description": REASONS[status],
        "content": {
            "application/json": {"schema": schema},
            # when the request accepts text/event-stream: one `data: {error, detail, status}`
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
    if status in (429, 503):
        response["headers"] = RETRY_AFTER
    return response


def add_error_responses(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    components.setdefault(
        "ValidationError",
        {
            "title": "ValidationError",
            "type": "object",
            "required": ["loc", "msg", "type"],
            "properties": {
                "loc": {
                    "type": "array",
                    "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                },
                "msg": {"type": "string"},
                "type": {"type": "string"},
            },
        },
    )
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in statuses(method, path):
                if status == 422 and "422" in responses:
                    continue  # FastAPI's own entry: the same body
                responses.setdefault(str(status), _error(status))


def document_errors(app: FastAPI) -> None:
    """Make ``app.openapi()`` include the error answers (built once, then cached by FastAPI)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        first = app.openapi_schema is None
        schema = build()
        if first:
            add_error_responses(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
