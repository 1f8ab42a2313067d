"""The OpenAPI document, generated from the route table.

Each operation comes from its :class:`~flowserve.http.routing.Route`: parameters with their
limits and defaults, the body, what a 200 is, and the error answers. Handlers raise flowserve
errors rather than return them, and ``flowserve.http.errors`` maps them to statuses in one
place; which statuses a route may answer follows from what it declares (a key: 401, 403, 422,
429; a run: 404, 413, 503; every route: 414, 431 from the size guard) plus its own
``errors``. Clients generated from ``/openapi.json`` and the schema fuzzer
(``tests/test_fuzz_http.py``) so know every status the server sends.
"""

from __future__ import annotations

from typing import Any

from flowserve.http.routing import Route

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
VALIDATION_ERROR: dict[str, Any] = {
    "title": "ValidationError",
    "type": "object",
    "required": ["loc", "msg", "type"],
    "properties": {
        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
        "msg": {"type": "string"},
        "type": {"type": "string"},
    },
}
OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "title": "OpenAIError",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}
}
REASONS = {
    400: "invalid body (routes answering in OpenAI's shape say 400 where the others say 422)",
    401: "no, malformed, unknown or revoked API key, or a key of another org",
    403: "the key may not do this (a public key publishing), or the browser origin is not allowed",
    404: "unknown flow, version or run",
    413: "request body too large",
    414: "URL too long",
    415: "unsupported file type (uploads)",
    422: "invalid parameters or body",
    429: "rate or per-key concurrency limit",
    431: "request headers too large",
    502: "the run failed (detail names the error, node and run)",
    503: "the server is at its run limit, or shutting down",
}
EVERY = (414, 431)  # the size guard answers before anything else
KEYED = (401, 403, 422, 429)
RUN = (404, 413, 503)


def statuses(route: Route) -> tuple[int, ...]:
    """The error statuses a route may answer."""
    found = set(EVERY) | set(route.errors)
    if route.key is not None:
        found.update(KEYED)
    if route.starts_run:
        found.update(RUN)
    if route.params:
        found.add(422)
    if route.errors_as == "openai" and 422 in found:
        found.remove(422)
        found.add(400)
    return tuple(sorted(found))


def _error(status: int, route: Route) -> dict[str, Any]:
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}},
        # when the request accepts text/event-stream: one `data: {error, detail, status}`
        "text/event-stream": {"schema": {"type": "string"}},
    }
    if route.errors_as == "openai":  # always JSON
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}
    response: dict[str, Any] = {"description": REASONS[status], "content": content}
    if status in (429, 503):
        response["headers"] = RETRY_AFTER
    return response


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": list(route.tags),
        "summary": route.summary,
        "operationId": route.handler.__name__,
    }
    if route.description:
        operation["description"] = route.description
    if route.params:
        operation["parameters"] = [param.schema() for param in route.params]
    if route.body is not None:
        operation["requestBody"] = route.body
    content: dict[str, Any] = {media: {"schema": {}} for media in route.content}
    responses: dict[str, Any] = {
        str(status): {"description": "Successful Response", "content": content}
        for status in route.ok
    }
    for status in statuses(route):
        responses[str(status)] = _error(status, route)
    operation["responses"] = responses
    return operation


def document(routes: list[Route], title: str, version: str, description: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.documented:
            paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": ERROR_SCHEMA,
                "ValidationError": VALIDATION_ERROR,
                "OpenAIError": OPENAI_ERROR_SCHEMA,
            }
        },
    }
