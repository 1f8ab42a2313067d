"""Reading the run request body: one JSON object of inputs plus an optional ``user_id``.

Every limit is checked here, before a flow sees the inputs, and each refusal names it: size
(413), JSON nesting (422: orjson refuses over 1024 levels without recursing, and anything
deeper than the object itself is refused later as "must be a string"), number of inputs and
length of each (422, naming the field), and ``user_id``'s format.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from flowserve.errors import InputError, PayloadTooLargeError

USER_ID = re.compile(r"[\w.@:+-]{1,256}")  # fullmatch: ``$`` would let a final newline in
JSON_MAX_DEPTH = 1024  # orjson's own limit
_JSON_NESTING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
MAX_NAME = 64  # input names are flow identifiers

# Documented in OpenAPI although the handler reads the body itself (faster than a pydantic
# model per request, and keeps the contract's exact error shapes).
RUN_BODY: dict[str, Any] = {
    "required": False,  # no body (or ``{}``) runs the flow on its inputs' defaults
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "user_id": {
                        "type": ["string", "null"],
                        "minLength": 1,
                        "maxLength": 256,
                        "description": "keys conversation memory: letters, digits, . @ : + - _",
                    }
                },
                "additionalProperties": {"type": "string"},
                "example": {"in-0": "How do I reset my password?", "user_id": "user-42"},
            }
        }
    },
}


def _nesting(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (strings skipped). Only called on
    a body orjson refused, to say why."""
    depth = deepest = 0
    for match in _JSON_NESTING.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


async def read_capped(request: Request, limit: int, what: str = "request body") -> bytes:
    """The whole body, refused (413) as soon as it is known to be over ``limit`` bytes: from
    its Content-Length, else as it arrives, so an oversized body is never held whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"{what} larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"{what} larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody will read the answer; a clean 400 instead of a logged traceback.
        raise InputError("client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def read_run_body(
    request: Request, limit: int, max_inputs: int = 64, max_input_chars: int = 100_000
) -> tuple[dict[str, Any], str | None]:
    raw = await read_capped(request, limit)
    if not raw:  # no body at all; whitespace alone is no JSON text (RFC 8259 2), so a 422
        data: Any = {}
    else:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            if _nesting(raw) > JSON_MAX_DEPTH:
                raise InputError(
                    f"body nests JSON deeper than {JSON_MAX_DEPTH} levels", ("body",)
                ) from None
            raise InputError("body is not valid JSON", ("body",)) from None
    if not isinstance(data, dict):
        raise InputError("body must be a JSON object of inputs", ("body",))
    user_id = data.pop("user_id", None)
    if len(data) > max_inputs:
        raise InputError(f"too many inputs: {len(data)} (the limit is {max_inputs})", ("body",))
    for name, value in data.items():
        if len(name) > MAX_NAME:
            raise InputError(
                f"input name {name[:MAX_NAME]!r}… is longer than {MAX_NAME} characters",
                ("body", name[:MAX_NAME]),
            )
        if isinstance(value, str) and len(value) > max_input_chars:
            raise InputError(
                f"input {name!r} is longer than {max_input_chars} characters", ("body", name)
            )
    if user_id is not None and (not isinstance(user_id, str) or not USER_ID.fullmatch(user_id)):
        raise InputError(
            "user_id must be a string of 1-256 letters, digits or . @ : + - _",
            ("body", "user_id"),
        )
    return data, user_id
