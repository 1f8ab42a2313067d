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
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import anyio
from pydantic import Field

from flowserve.errors import ProviderUpstreamError
from flowserve.providers.base import LLMRequest, NodeOptions, Provider


class ScriptedOptions(NodeOptions):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)


def _script(model: str) -> tuple[str, dict[str, str]]:
    name, _, query = model.partition("?")
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    return name, params


class ScriptedProvider(Provider):
    name = "scripted"
    Options = ScriptedOptions
    default_model = "echo"

    def check_model(self, model: str) -> str | None:
        name, params = _script(model)
        if name != "echo":
            return f"unknown scripted model {name!r} (use 'echo')"
        for key in ("delay", "first_delay", "fail_after", "repeat"):
            if key in params:
                try:
                    float(params[key])
                except ValueError:
                    return f"{key} must be a number"
        return None

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        _, params = _script(request.model)
        delay = float(params.get("delay", 0))
        first_delay = float(params.get("first_delay", delay))
        fail_after = int(float(params["fail_after"])) if "fail_after" in params else None
        if params.get("history") == "1":
            source = " | ".join(m.content for m in request.messages)
        else:
            # parse_qs already turned a "+" of ``text=`` into a space; the prompt is as given.
            source = params.get("text", request.messages[-1].content)
        words = source.split(" ") * int(float(params.get("repeat", 1)))
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
