"""The one place where flowserve errors become HTTP responses.

Before the first byte, every error gets a real status code and FastAPI's ``{"detail": …}``
body. When the request prefers ``text/event-stream`` (its ``Accept`` read as RFC 9110 media
ranges and q-values: :func:`flowserve.http.accept.prefers_event_stream`), the same status is
sent as an SSE body ``data: {"error", "detail", "status"}`` so that ``fetch-event-source``
clients see the error instead of retrying blindly (contract 2.2). An error answer to a browser
(an ``Origin`` header) is readable by it, whatever its origin: see ``flowserve.http.admission``.

A route declared ``errors_as="openai"`` (``/v1/chat/completions``, ``/v1/models``) answers in
OpenAI's shape instead, always JSON, so that OpenAI's SDKs raise their own exception classes:
``{"error": {"message", "type", "param", "code"}}``, with 400 where the others say 422.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from flowserve.errors import (
    AuthError,
    FlowserveError,
    FlowValidationError,
    ForbiddenError,
    InputError,
    LimitError,
    NotFoundError,
    ParameterError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from flowserve.http.accept import prefers_event_stream
from flowserve.http.access import note
from flowserve.http.admission import error_headers
from flowserve.http.routing import ErrorShape

log = logging.getLogger("flowserve.http")


def status_for(exc: FlowserveError) -> int:
    if isinstance(exc, ForbiddenError):
        return 403
    if isinstance(exc, AuthError):
        return 401
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, UnsupportedMediaTypeError):
        return 415
    if isinstance(exc, InputError | FlowValidationError):
        return 422
    if isinstance(exc, LimitError):
        return exc.status
    return 500


def detail_for(exc: FlowserveError) -> Any:
    if isinstance(exc, PayloadTooLargeError | UnsupportedMediaTypeError):
        return exc.message
    if isinstance(exc, ParameterError):
        return [{"loc": list(loc), "msg": msg, "type": kind} for loc, msg, kind in exc.problems]
    if isinstance(exc, InputError):
        return [{"loc": list(exc.loc), "msg": exc.message, "type": exc.error_type}]
    if isinstance(exc, FlowValidationError):
        return [
            {"loc": loc.split("."), "msg": msg, "type": exc.error_type} for loc, msg in exc.problems
        ]
    return exc.message


def wants_sse(request: Request) -> bool:
    accept = request.headers.getlist("accept")  # several lines make one list (RFC 9110 5.3)
    return prefers_event_stream(accept[0] if len(accept) == 1 else ", ".join(accept))


# OpenAI's error type and code by status (429 and 5xx below)
_OPENAI_TYPES = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "model_not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object (also sent mid-stream, where the SDKs raise it while iterating)."""
    if status == 429:
        kind, default = "requests", "rate_limit_exceeded"  # OpenAI's type for request limits
    elif status >= 500:
        kind, default = "server_error", None
    else:
        kind, default = _OPENAI_TYPES.get(status, ("invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code or default}}


def _openai_body(status: int, detail: Any) -> dict[str, Any]:
    if isinstance(detail, list):  # validation problems: {loc, msg, type}, the first one's field
        first = detail[0]
        loc = first.get("loc", [])[1:]  # after "body", "query" or "path"
        param = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc) or None
        message = "; ".join(str(d.get("msg")) for d in detail)
        return openai_error(status, message, param, first.get("type"))
    if isinstance(detail, dict):  # a failed run: {error, error_type, node_id, run_id}
        return openai_error(
            status, str(detail.get("error") or "run failed"), None, detail.get("error_type")
        )
    return openai_error(status, str(detail))


def error_response(
    request: Request,
    status: int,
    detail: Any,
    headers: dict[str, str] | None = None,
    shape: ErrorShape = "flowserve",
) -> Response:
    headers = dict(headers or {})
    origin = request.headers.get("origin")
    if origin is not None:
        headers.update(error_headers(origin))
    if shape == "openai":
        status = 400 if status == 422 else status
        note(request.scope, status=status)
        body = orjson.dumps(_openai_body(status, detail))
        return Response(body, status, headers, "application/json")
    note(request.scope, status=status)
    if not wants_sse(request):
        return Response(orjson.dumps({"detail": detail}), status, headers, "application/json")
    message = (
        detail
        if isinstance(detail, str)
        else "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail
        )
    )
    payload = orjson.dumps({"error": message, "detail": detail, "status": status})
    body = b"data: " + payload + b"\n\n"
    if "Retry-After" in headers:
        body = f"retry: {int(float(headers['Retry-After']) * 1000)}\n".encode() + body
    headers["cache-control"] = "no-cache"
    return Response(body, status, headers, "text/event-stream; charset=utf-8")


async def flowserve_error_handler(
    request: Request, exc: Exception, shape: ErrorShape = "flowserve"
) -> Response:
    assert isinstance(exc, FlowserveError)
    status = status_for(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, LimitError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if status == 500:
        log.error("unmapped error: %s", exc.message)
    return error_response(request, status, detail_for(exc), headers, shape)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (an unknown path: 404) in the same shape."""
    assert isinstance(exc, HTTPException)
    return error_response(request, exc.status_code, exc.detail, dict(exc.headers or {}))
