"""A scriptable provider for tests and demos, first-class like httpx's MockTransport.

The model string is the script: ``echo`` streams the rendered prompt back word by word;
parameters follow a ``?``: ``echo?delay=0.05&fail_after=3&repeat=2``.

- ``delay``: seconds before each token;
- ``first_delay``: seconds before the first token;
- ``fail_after``: raise a ProviderUpstreamError after that many tokens;
- ``repeat``: stream the prompt this many times;
- ``text``: stream this text instead of the prompt (``+`` is a space);
- ``history=1``: stream every message of the conversation (memory included), ``|``-joined.
Usage is reported as the word counts of prompt and answer.

Each parameter is checked when the flow is published (finite, within bounds, known names);
the parsed :class:`Script` is what a run uses. Registered only with the ``test_providers``
setting (entry-point group ``flowserve.test_providers``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs

import anyio
from pydantic import Field

from flowserve.errors import ProviderBadRequestError, ProviderUpstreamError
from flowserve.providers.base import LLMRequest, NodeOptions, Provider


class ScriptedOptions(NodeOptions):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)


_MAX_DELAY = 60.0
_MAX_REPEAT = 10_000
_MAX_TEXT = 100_000
_PARAMS = frozenset({"delay", "first_delay", "fail_after", "repeat", "text", "history"})


@dataclass(frozen=True, slots=True)
class Script:
    """A model string, parsed and checked once; what :meth:`ScriptedProvider.stream` uses."""

    delay: float = 0.0
    first_delay: float | None = None
    fail_after: int | None = None
    repeat: int = 1
    text: str | None = None
    history: bool = False


class ScriptError(ValueError):
    """A model string the scripted provider refuses (the message says which parameter)."""


def _number(params: dict[str, str], key: str, high: float) -> float | None:
    if key not in params:
        return None
    try:
        value = float(params[key])
    except ValueError:
        raise ScriptError(f"{key} must be a number") from None
    if not math.isfinite(value) or not 0 <= value <= high:
        raise ScriptError(f"{key} must be a number from 0 to {high:g}")
    return value


def _count(params: dict[str, str], key: str, low: int, high: int) -> int | None:
    if key not in params:
        return None
    text = params[key]
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ScriptError(f"{key} must be a whole number from {low} to {high}")
    return int(text)


@functools.lru_cache(maxsize=256)
def parse_script(model: str) -> Script:
    name, _, query = model.partition("?")
    if name != "echo":
        raise ScriptError(f"unknown scripted model {name!r} (use 'echo')")
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise ScriptError(f"unknown parameter {unknown[0]!r}")
    if params.get("history", "0") not in ("0", "1"):
        raise ScriptError("history must be 0 or 1")
    text = params.get("text")
    if text is not None and len(text) > _MAX_TEXT:
        raise ScriptError(f"text must be at most {_MAX_TEXT} characters")
    return Script(
        delay=_number(params, "delay", _MAX_DELAY) or 0.0,
        first_delay=_number(params, "first_delay", _MAX_DELAY),
        fail_after=_count(params, "fail_after", 0, 1_000_000),
        repeat=_count(params, "repeat", 1, _MAX_REPEAT) or 1,
        # parse_qs already turned a "+" of ``text=`` into a space
        text=text,
        history=params.get("history") == "1",
    )


class ScriptedProvider(Provider):
    name = "scripted"
    Options = ScriptedOptions
    default_model = "echo"

    def check_model(self, model: str) -> str | None:
        try:
            parse_script(model)
        except ScriptError as exc:
            return str(exc)
        return None

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        try:
            script = parse_script(request.model)
        except ScriptError as exc:
            raise ProviderBadRequestError(str(exc), provider=self.name) from None
        delay = script.delay
        first_delay = delay if script.first_delay is None else script.first_delay
        fail_after = script.fail_after
        if script.history:
            source = " | ".join(m.content for m in request.messages)
        else:
            source = script.text if script.text is not None else request.messages[-1].content
        words = source.split(" ") * script.repeat
        limit = request.options.get("max_tokens")
        if limit is not None:
            words = words[:limit]
        sent = 0
        for i, word in enumerate(words):
            if fail_after is not None and sent >= fail_after:
                raise ProviderUpstreamError("scripted failure", provider=self.name)
            pause = first_delay if i == 0 else delay
            if pause:
                await anyio.sleep(pause)
            else:
                await anyio.lowlevel.checkpoint()
            yield word if i == 0 else " " + word
            sent += 1
        if fail_after is not None and sent >= fail_after:
            raise ProviderUpstreamError("scripted failure", provider=self.name)
        prompt_words = sum(len(m.content.split()) for m in request.messages)
        request.usage.prompt_tokens = prompt_words
        request.usage.completion_tokens = sent
