"""Reading the run request body: one JSON object of inputs plus an optional ``user_id``."""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request

from flowserve.errors import InputError, PayloadTooLargeError

USER_ID = re.compile(r"^[\w.@:+-]{1,256}$")

# Documented in OpenAPI although the route reads the body itself (faster than a pydantic model
# per request, and lets us keep the contract's exact error shapes).
RUN_BODY_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "user_id": {"type": "string", "description": "keys conversation memory"}
                    },
                    "additionalProperties": {"type": "string"},
                    "example": {"in-0": "How do I reset my password?", "user_id": "user-42"},
                }
            }
        },
    }
}


async def read_run_body(request: Request, limit: int) -> tuple[dict[str, Any], str | None]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body larger than {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InputError("body is not valid JSON", ("body",)) from None
    if not isinstance(data, dict):
        raise InputError("body must be a JSON object of inputs", ("body",))
    user_id = data.pop("user_id", None)
    if user_id is not None and (not isinstance(user_id, str) or not USER_ID.match(user_id)):
        raise InputError(
            "user_id must be a string of 1-256 letters, digits or . @ : + - _",
            ("body", "user_id"),
        )
    return data, user_id
