"""A fake Chat Completions server: OpenAI itself, or the flavour of a compatible server.

Byte-level behaviour follows ``reference/providers-wire.md`` §1.9 and §4:

* ``POST /v1/chat/completions``; ``Authorization: Bearer <key>`` is checked when the fake
  has a key (401 ``invalid_api_key`` otherwise, echoing the presented key as OpenAI does).
* 200 ``text/event-stream; charset=utf-8``; every event is ``data: <compact JSON>\\n\\n``,
  no ``event:`` lines; UTF-8 is sent raw, not ``\\u``-escaped.
* ``openai``: first chunk ``delta{role:"assistant",content:"",refusal:null}``, content
  chunks, ``delta{}`` with ``finish_reason``, then (with ``include_usage``) a ``choices: []``
  usage chunk, ``"usage": null`` on the others, ``obfuscation`` padding, ``data: [DONE]``.
* ``vllm``: ``finish_reason`` on the last text chunk plus a ``stop_reason`` extra field; no
  ``usage`` key on ordinary chunks; an in-stream error is followed by ``[DONE]``; error
  bodies carry an integer ``code``.
* ``llamacpp``: first chunk ``content: null``, a separate final ``delta{}`` chunk with a
  non-standard ``timings`` object, ``system_fingerprint: "b<build>-<hash>"``, integer codes.
* ``ollama``: ``role`` repeated on every chunk, ``finish_reason`` on a last empty-content
  chunk, ``system_fingerprint: "fp_ollama"``, id ``chatcmpl-<n>``; with
  ``Scenario(end_marker=False)`` the stream ends after the usage chunk without ``[DONE]``.
"""

from __future__ import annotations

import secrets
import time
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

FLAVORS = ("openai", "vllm", "llamacpp", "ollama")
DEFAULT_KEY = "sk-test-openai-0123456789abcdef"

_ERRORS: dict[int, tuple[str, str, str | None]] = {  # status → (type, message, code)
    400: ("invalid_request_error", "Invalid value for 'temperature'.", "invalid_value"),
    404: ("invalid_request_error", "The model `nope` does not exist.", "model_not_found"),
    429: (
        "requests",
        "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3.",
        "rate_limit_exceeded",
    ),
    500: ("server_error", "The server had an error while processing your request.", None),
    503: ("service_unavailable_error", "The engine is currently overloaded.", None),
}
STREAM_ERROR = {
    "message": "The server had an error processing your request. Sorry about that! You can "
    "retry your request, or contact us through our help center at help.openai.com if you "
    "keep seeing this error.",
    "type": "server_error",
    "param": None,
    "code": None,
}


class OpenAIFake(FakeServer):
    def __init__(self) -> None:
        self.flavor = "openai"
        self.api_key: str | None = DEFAULT_KEY
        super().__init__()

    def configure(self, flavor: str = "openai", api_key: str | None = DEFAULT_KEY) -> None:
        assert flavor in FLAVORS, flavor
        self.flavor, self.api_key = flavor, api_key

    def reset(self) -> None:
        super().reset()
        self.configure()

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    async def handle(self, request: RecordedRequest, receive: Any, send: Any) -> None:
        if (request.method, request.path) != ("POST", "/v1/chat/completions"):
            body = self.error_body(404, f"Unknown request URL: {request.path}")
            await self.send_json(send, 404, body)
            return
        presented = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key is not None and presented != self.api_key:
            message = (
                f"Incorrect API key provided: {presented}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            body = self.error_body(401, message, code="invalid_api_key")
            await self.send_json(send, 401, body)
            return
        scenario = self.next_scenario()
        if scenario.status != 200:
            body = scenario.body if scenario.body is not None else self.error_body(scenario.status)
            await self.send_json(send, scenario.status, body, scenario.headers)
            return
        if await self.send_instead_of_stream(send, scenario, scenario.headers):
            return
        options = request.body.get("stream_options") or {}
        events = self._events(scenario, request.body["model"], options.get("include_usage") is True)
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "x-request-id": f"req_{secrets.token_hex(16)}",
            "openai-processing-ms": "112",
            **scenario.headers,
        }
        await self.send_stream(receive, send, events, headers)

    def error_body(self, status: int, message: str | None = None, code: Any = None) -> Any:
        kind, default_message, default_code = _ERRORS.get(
            status, ("invalid_request_error", f"Error {status}", None)
        )
        message = message or default_message
        if self.flavor == "vllm":
            return {
                "error": {
                    "message": message,
                    "type": "BadRequestError",
                    "param": None,
                    "code": status,
                }
            }
        if self.flavor == "llamacpp":
            return {"error": {"code": status, "message": message, "type": kind}}
        if self.flavor == "ollama":
            return {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return {
            "error": {"message": message, "type": kind, "param": None, "code": code or default_code}
        }

    async def _events(
        self, scenario: Scenario, model: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        flavor = self.flavor
        created = int(time.time())
        if flavor == "ollama":
            chunk_id, fingerprint, served = f"chatcmpl-{secrets.randbelow(999)}", "fp_ollama", model
        elif flavor == "llamacpp":
            chunk_id = f"chatcmpl-{secrets.token_urlsafe(24)}"
            fingerprint, served = "b6123-4a5b6c7d", model
        elif flavor == "vllm":
            chunk_id, fingerprint, served = f"chatcmpl-{secrets.token_hex(16)}", None, model
        else:
            chunk_id, fingerprint, served = (
                f"chatcmpl-{secrets.token_urlsafe(21)}",
                "fp_d4636387fb",
                f"{model}-2024-07-18",
            )

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            choice: dict[str, Any] = {"index": 0, "delta": delta}
            if flavor != "ollama":
                choice["logprobs"] = None
            choice["finish_reason"] = finish
            if flavor == "vllm":
                choice["stop_reason"] = None
            obj: dict[str, Any] = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": served,
            }
            if flavor == "openai":
                obj["service_tier"] = "default"
            if fingerprint:
                obj["system_fingerprint"] = fingerprint
            obj["choices"] = [choice]
            if include_usage and flavor != "vllm":
                obj["usage"] = None
            if flavor == "openai":
                obj["obfuscation"] = secrets.token_urlsafe(6)
            obj.update(extra)
            return frame(obj)

        sent = scenario.sent_tokens
        if flavor == "openai":
            yield chunk({"role": "assistant", "content": "", "refusal": None})
        elif flavor == "vllm":
            yield chunk({"role": "assistant", "content": ""})
        elif flavor == "llamacpp":
            yield chunk({"role": "assistant", "content": None})
        for index, token in enumerate(sent):
            if index and scenario.gap:
                await anyio.sleep(scenario.gap)
            last = scenario.completes and index == len(sent) - 1
            if flavor == "ollama":
                event = chunk({"role": "assistant", "content": token})
            elif flavor == "vllm" and last:
                event = chunk({"content": token}, "stop")
            else:
                event = chunk({"content": token})
            async for part in event_writes(event, scenario.split_utf8):
                yield part
        if scenario.error_after is not None:
            yield frame({"error": scenario.error_body or STREAM_ERROR})
            if flavor == "vllm":
                yield b"data: [DONE]\n\n"
            return
        if scenario.truncate_after is not None:
            return
        if scenario.drop_after is not None:
            yield DROP
            return
        if flavor in ("openai", "llamacpp"):
            timings = {
                "prompt_n": scenario.prompt_tokens,
                "predicted_n": len(sent),
                "predicted_per_second": 52.1,
            }
            yield chunk({}, "stop", **({"timings": timings} if flavor == "llamacpp" else {}))
        elif flavor == "ollama":
            yield chunk({"role": "assistant", "content": ""}, "stop")
        elif not sent:  # vllm with nothing to say still finishes
            yield chunk({"content": ""}, "stop")
        if include_usage:
            usage: dict[str, Any] = {
                "prompt_tokens": scenario.prompt_tokens,
                "completion_tokens": len(sent),
                "total_tokens": scenario.prompt_tokens + len(sent),
            }
            if flavor == "openai":
                usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
            obj = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": served,
                "choices": [],
                "usage": usage,
            }
            yield frame(obj)
        if scenario.end_marker:
            yield b"data: [DONE]\n\n"


def frame(obj: Any) -> bytes:
    return f"data: {compact(obj)}\n\n".encode()
