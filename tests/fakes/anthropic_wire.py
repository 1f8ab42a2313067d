"""A fake Anthropic Messages server (``reference/providers-wire.md`` §2.6).

* ``POST /v1/messages``; requires ``x-api-key`` (401 ``authentication_error`` otherwise) and
  ``anthropic-version`` (400 without it).
* 200 ``text/event-stream; charset=utf-8`` with a ``request-id`` header; named events, each
  ``event: <name>\\ndata: <json>\\n\\n`` with the same ``type`` inside: ``message_start``,
  ``content_block_start``, ``ping`` (written as the SDK fixture has it, ``{"type": "ping"}``),
  one ``content_block_delta`` per token, ``content_block_stop``, ``message_delta``,
  ``message_stop``, then the body ends (the SDK reads to EOF).
* Errors are ``{"type":"error","error":{"type":…,"message":…},"request_id":…}``; the in-stream
  one is ``event: error`` with ``overloaded_error`` by default.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import anyio

from tests.fakes._server import (
    DROP,
    FakeServer,
    RecordedRequest,
    Scenario,
    compact,
    event_writes,
)

DEFAULT_KEY = "sk-ant-api03-test-0123456789abcdef"

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "max_tokens: Field required"),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "model: claude-nope"),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
STREAM_ERROR = {
    "type": "error",
    "error": {"details": None, "type": "overloaded_error", "message": "Overloaded"},
}


def error_body(status: int) -> dict[str, Any]:
    kind, message = _ERRORS.get(status, ("api_error", f"Error {status}"))
    return {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": f"req_{secrets.token_hex(12)}",
    }


class AnthropicFake(FakeServer):
    def __init__(self) -> None:
        self.api_key = DEFAULT_KEY
        super().__init__()

    async def handle(self, request: RecordedRequest, receive: Any, send: Any) -> None:
        if (request.method, request.path) != ("POST", "/v1/messages"):
            await self.send_json(send, 404, error_body(404))
            return
        if request.headers.get("x-api-key") != self.api_key:
            await self.send_json(send, 401, error_body(401))
            return
        if "anthropic-version" not in request.headers:
            body = error_body(400)
            body["error"]["message"] = "anthropic-version: header is required"
            await self.send_json(send, 400, body)
            return
        scenario = self.next_scenario()
        headers = {"request-id": f"req_{secrets.token_hex(12)}", **scenario.headers}
        if scenario.status != 200:
            body = scenario.body if scenario.body is not None else error_body(scenario.status)
            await self.send_json(send, scenario.status, body, headers)
            return
        if await self.send_instead_of_stream(send, scenario, headers):
            return
        headers["content-type"] = "text/event-stream; charset=utf-8"
        await self.send_stream(receive, send, self._events(scenario, request.body), headers)

    async def _events(self, scenario: Scenario, body: dict[str, Any]) -> AsyncIterator[bytes]:
        sent = scenario.sent_tokens
        message = {
            "id": f"msg_{secrets.token_urlsafe(24)}",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": body["model"],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": scenario.prompt_tokens, "output_tokens": 1},
        }
        yield event("message_start", {"type": "message_start", "message": message})
        block = {"type": "text", "text": ""}
        yield event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        yield b'event: ping\ndata: {"type": "ping"}\n\n'
        for index, token in enumerate(sent):
            if index and scenario.gap:
                await anyio.sleep(scenario.gap)
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": token},
            }
            async for part in event_writes(
                event("content_block_delta", delta), scenario.split_utf8
            ):
                yield part
        if scenario.error_after is not None:
            yield event("error", scenario.error_body or STREAM_ERROR)
            return
        if scenario.truncate_after is not None:
            return
        if scenario.drop_after is not None:
            yield DROP
            return
        yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(sent)},
            },
        )
        yield event("message_stop", {"type": "message_stop"})


def event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {compact(data)}\n\n".encode()
