"""What ``/v1/chat/completions`` reads and writes: the request body, checked strictly, and
the ``chat.completion`` objects it answers with (``flowserve.http.openai_api``).

The body is OpenAI's, with unknown fields ignored (clients send many: ``logprobs``,
``parallel_tool_calls``, …). What it names is checked as OpenAI checks it (types, ranges,
``n`` at most 1), but the generation options (``temperature``, ``max_tokens``, ``top_p``,
``stop``, …) are then ignored: the flow's file decides how each of its nodes generates.
Only the last user message is used; the flow's memory, keyed by ``user``, holds the rest.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from flowserve.errors import InputError, NotFoundError
from flowserve.http.body import USER_ID

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_MODEL = 200
MAX_INT = 2**31 - 1
# org/flow_id[@version]: the org is anything but "/", the flow id a flow file's identifier
_MODEL = re.compile(r"([^/]{1,64})/([A-Za-z][A-Za-z0-9_-]{0,63})(?:@([0-9]{1,10}))?")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # a string, a list of content parts ({"type": "text", "text": …}, images, …), or null
    content: str | tuple[dict[str, Any], ...] | None = None

    @field_validator("content", mode="plain")
    @classmethod
    def _content(cls, value: Any) -> str | tuple[dict[str, Any], ...] | None:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise PydanticCustomError(
                "content_type", "content must be a string, a list of content parts, or null"
            )
        for i, part in enumerate(value):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise PydanticCustomError(
                    "content_part",
                    "content part {i} must be an object with a string 'type'",
                    {"i": i},
                )
            if "text" in part and not isinstance(part["text"], str):
                raise PydanticCustomError(
                    "content_part", "content part {i}: 'text' must be a string", {"i": i}
                )
        return tuple(value)


class StreamOptions(_Body):
    include_usage: bool | None = None


class ChatRequest(_Body):
    model: str = Field(min_length=1, max_length=MAX_MODEL)
    messages: tuple[Message, ...]  # not empty: checked after, not to add to an item's error
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, min_length=1, max_length=256)
    n: int | None = Field(default=None, ge=1, le=MAX_INT)
    # Checked, then ignored: the flow's file decides these.
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    stop: str | tuple[str, ...] | None = None


def _param(loc: tuple[str | int, ...]) -> str:
    """A pydantic location in OpenAI's ``param`` style: ``messages.[0].content``."""
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in loc)


def parse_request(raw: bytes) -> ChatRequest:
    """The body, or InputError (400) naming each problem, the first one's field as ``param``."""
    try:
        body = ChatRequest.model_validate_json(raw or b"null")
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False)
        first = tuple(problems[0]["loc"])
        message = "; ".join(f"{_param(tuple(p['loc'])) or 'body'}: {p['msg']}" for p in problems)
        raise InputError(message, ("body", *first)) from None
    if not body.messages:
        raise InputError("messages must not be empty", ("body", "messages"))
    if body.n is not None and body.n > 1:
        raise InputError("n must be 1: a flow run gives one answer", ("body", "n"))
    if body.stream_options is not None and not body.stream:
        raise InputError(
            "stream_options is only allowed when stream is true", ("body", "stream_options")
        )
    if body.user is not None and not USER_ID.fullmatch(body.user):
        raise InputError("user must be 1-256 letters, digits or . @ : + - _", ("body", "user"))
    return body


def parse_model(model: str) -> tuple[str, str, int | None]:
    """(org, flow id, version or None for the latest); NotFoundError for any other shape."""
    matched = _MODEL.fullmatch(model)
    if matched is None:
        raise NotFoundError(
            f"model {model!r} not found: models here are flows, 'org/flow_id' or"
            " 'org/flow_id@version'"
        )
    org, flow_id, version = matched.groups()
    if version is not None and int(version) > MAX_INT:
        raise not_found(model)
    return org, flow_id, None if version is None else int(version)


def not_found(model: str) -> NotFoundError:
    """The one answer for a flow that is unknown, of another org, or without that version."""
    return NotFoundError(f"model {model!r} not found")


def last_user_text(body: ChatRequest) -> tuple[int, str]:
    """The last user message's index and text (its text parts joined by new lines); 400 if
    there is none, or if it holds anything but text."""
    for index in range(len(body.messages) - 1, -1, -1):
        message = body.messages[index]
        if message.role != "user":
            continue
        content = message.content
        if content is None:
            raise InputError("the last user message has no content", _at(index))
        if isinstance(content, str):
            return index, content
        texts: list[str] = []
        for part in content:
            if part["type"] != "text" or not isinstance(part.get("text"), str):
                raise InputError(
                    f"only text content can be sent to a flow, not {part['type'][:40]!r}",
                    _at(index),
                )
            texts.append(part["text"])
        return index, "\n".join(texts)
    raise InputError("messages must hold a message with role 'user'", ("body", "messages"))


def _at(index: int) -> tuple[str | int, ...]:
    return ("body", "messages", index, "content")


_NULLABLE_STRING = {"type": ["string", "null"]}
# The body in OpenAPI: what parse_request refuses, and no more (unknown fields are accepted).
CHAT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model", "messages"],
                "properties": {
                    "model": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_MODEL,
                        "description": "the flow: 'org/flow_id', or 'org/flow_id@version'",
                    },
                    "messages": {
                        "type": "array",
                        "minItems": 1,
                        "description": "the last user message fills the flow's chat input",
                        "items": {
                            "type": "object",
                            "required": ["role"],
                            "properties": {
                                "role": {"enum": list(ROLES)},
                                "content": {
                                    "anyOf": [
                                        {"type": "string"},
                                        {"type": "null"},
                                        {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "required": ["type"],
                                                "properties": {
                                                    "type": {"type": "string"},
                                                    "text": {"type": "string"},
                                                },
                                            },
                                        },
                                    ]
                                },
                            },
                        },
                    },
                    "stream": {"type": ["boolean", "null"]},
                    "stream_options": {
                        "type": ["object", "null"],
                        "properties": {"include_usage": {"type": ["boolean", "null"]}},
                    },
                    "user": {
                        "type": ["string", "null"],
                        "minLength": 1,
                        "maxLength": 256,
                        "description": "keys the flow's conversation memory",
                    },
                    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 1},
                    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
                    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                    "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_INT},
                    "max_completion_tokens": {
                        "type": ["integer", "null"],
                        "minimum": 1,
                        "maximum": MAX_INT,
                    },
                    "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
                    "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
                    "seed": {"type": ["integer", "null"]},
                    "stop": {
                        "anyOf": [
                            _NULLABLE_STRING,
                            {"type": "array", "items": {"type": "string"}},
                        ]
                    },
                },
                "example": {
                    "model": "acme/support-bot",
                    "messages": [{"role": "user", "content": "How do I reset my password?"}],
                    "stream": True,
                },
            }
        }
    },
}


def usage(node_usage: dict[str, Any]) -> dict[str, int]:
    """OpenAI's usage, summed over the flow's LLM nodes (a count a provider did not give is
    counted 0)."""
    prompt = sum(u.get("prompt_tokens") or 0 for u in node_usage.values())
    completion = sum(u.get("completion_tokens") or 0 for u in node_usage.values())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion(
    head: dict[str, Any], text: str, finish_reason: str, node_usage: dict[str, Any]
) -> dict[str, Any]:
    """A ``chat.completion``; ``head`` holds its id, object, created and model."""
    return {
        **head,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(node_usage),
    }
