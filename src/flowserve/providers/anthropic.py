"""Anthropic Messages API, streamed through the official ``anthropic`` SDK (imported lazily).

Non-obvious choices:

* ``max_tokens`` is required by the API; nodes that do not set it get
  :data:`DEFAULT_MAX_TOKENS`. The system prompt travels in ``system=``, ``stop`` as
  ``stop_sequences``.
* Only ``text_delta`` content is yielded (thinking, tool input and citations are not text).
* Usage: ``message_start`` carries the input tokens (cache reads and writes are added in, so
  ``prompt_tokens`` is everything the model read); ``message_delta`` carries the cumulative
  output tokens.
* The SDK reads until EOF and never checks for ``message_stop``; a stream that ends without
  it raises :class:`ProviderTruncatedError`.
* An ``event: error`` inside a 200 stream reaches us as a bare ``APIStatusError`` with
  ``status_code == 200``; its ``error.type`` field (``overloaded_error`` …) decides the
  flowserve error, exactly as the HTTP status does before the stream starts.
* SDK retries are off and the response is closed in ``finally`` (see ``openai.py``).
* Redirects are not followed (the SDK's default client follows them, and httpx keeps
  ``x-api-key`` on a redirect to another host); a 3xx is a final error.
* Written for the 0.x SDK (the ``cloud`` extra pins ``anthropic<1``): 1.0 dropped
  ``temperature`` and ``top_p`` from ``messages.create``, and 2.0 moved to bearer auth and a
  new API version that the wire reference does not cover.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
from pydantic import Field, ValidationError

from flowserve.errors import (
    ProviderBadRequestError,
    ProviderError,
    ProviderOverloadedError,
    ProviderRateLimitError,
    ProviderTruncatedError,
    ProviderUpstreamError,
)
from flowserve.providers import _upstream
from flowserve.providers.base import LLMRequest, NodeOptions, Provider, ProviderEnv

if TYPE_CHECKING:
    from anthropic import APIStatusError, AsyncAnthropic

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 1024
_READ_TIMEOUT = 900.0
_CONNECT_TIMEOUT = 10.0
_CLOSE_GRACE = 2.0

# ``error.type`` of an error event inside a 200 stream → what it means to us.
_STREAM_ERROR_TYPES: dict[str, type[ProviderError]] = {
    "overloaded_error": ProviderOverloadedError,
    "rate_limit_error": ProviderRateLimitError,
}


class AnthropicOptions(NodeOptions):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: list[str] | None = Field(default=None, min_length=1)


class AnthropicProvider(Provider):
    name = "anthropic"
    Options: ClassVar[type[NodeOptions]] = AnthropicOptions
    default_model = "claude-haiku-4-5"
    default_key_env = "ANTHROPIC_API_KEY"

    def __init__(self, env: ProviderEnv) -> None:
        super().__init__(env)
        self._clients: dict[tuple[str, str], AsyncAnthropic] = {}

    def _client(self, base_url: str, api_key: str) -> AsyncAnthropic:
        client = self._clients.get((base_url, api_key))
        if client is None:
            import anthropic

            # api_key and base_url are always passed, so the SDK never looks for
            # credentials or a base URL in the process environment. Its default client
            # follows redirects, and x-api-key would go along to wherever they point.
            timeout = anthropic.Timeout(_READ_TIMEOUT, connect=_CONNECT_TIMEOUT)
            client = anthropic.AsyncAnthropic(
                api_key=api_key,
                base_url=base_url,
                max_retries=0,
                timeout=timeout,
                http_client=anthropic.DefaultAsyncHttpxClient(
                    timeout=timeout, follow_redirects=False
                ),
            )
            self._clients[(base_url, api_key)] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        try:
            options = AnthropicOptions.model_validate(request.options)
        except ValidationError as exc:
            raise ProviderBadRequestError(
                f"invalid options: {exc.errors()[0]['msg']}", provider=self.name
            ) from exc
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": options.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
        }
        if request.system:
            params["system"] = request.system
        if options.temperature is not None:
            params["temperature"] = options.temperature
        if options.top_p is not None:
            params["top_p"] = options.top_p
        if options.stop:
            params["stop_sequences"] = options.stop
        return params

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        variable = self.key_env(request.api_key_env) or "ANTHROPIC_API_KEY"
        api_key = self.env.environ.get(variable)
        if not api_key:  # checked before any network call
            raise _upstream.missing_key(self.name, variable)
        base_url = request.base_url or self.env.settings.get("base_url") or DEFAULT_BASE_URL
        client = self._client(base_url, api_key)
        params = self._params(request)
        usage = request.usage
        finished = False
        with self._map_errors(api_key) as state:
            upstream = await client.messages.create(**params)
            state["connected"] = True
            try:
                async for event in upstream:
                    kind = getattr(event, "type", None)
                    if kind == "content_block_delta":
                        delta = event.delta
                        if getattr(delta, "type", None) == "text_delta" and delta.text:
                            yield delta.text
                    elif kind == "message_start":
                        start = getattr(event.message, "usage", None)
                        if start is not None:
                            usage.prompt_tokens = _input_tokens(start)
                            usage.completion_tokens = getattr(start, "output_tokens", None)
                    elif kind == "message_delta":
                        delta_usage = getattr(event, "usage", None)
                        if delta_usage is not None:
                            usage.completion_tokens = delta_usage.output_tokens
                            if getattr(delta_usage, "input_tokens", None) is not None:
                                usage.prompt_tokens = _input_tokens(delta_usage)
                    elif kind == "message_stop":
                        finished = True
            finally:
                with anyio.move_on_after(_CLOSE_GRACE, shield=True):
                    await upstream.close()
        if not finished:
            raise ProviderTruncatedError(_upstream.TRUNCATED, provider=self.name)

    def _map_errors(self, api_key: str) -> AbstractContextManager[dict[str, bool]]:
        """The SDK's and its HTTP library's exceptions, by kind (:func:`_upstream.map_errors`)."""
        import anthropic

        return _upstream.map_errors(
            self.name,
            status=(anthropic.APIStatusError,),
            read_status=lambda exc: self._status_error(exc, api_key),
            timeout=(anthropic.APITimeoutError, *_upstream.timeout_errors()),
            connection=(anthropic.APIConnectionError,),
            lost=_upstream.transport_errors(),  # not wrapped while the body is read
            malformed=(json.JSONDecodeError,),
        )

    def _status_error(self, exc: APIStatusError, api_key: str) -> ProviderError:
        status = exc.status_code
        error = exc.body.get("error") if isinstance(exc.body, dict) else None
        error = error if isinstance(error, dict) else {}
        detail = error.get("message")
        detail = detail if isinstance(detail, str) else None
        if status < 300:  # ``event: error`` inside a 200 stream
            message = _upstream.clean_message(detail or f"upstream returned HTTP {status}", api_key)
            cls = _STREAM_ERROR_TYPES.get(str(error.get("type")), ProviderUpstreamError)
            return cls(message, provider=self.name)
        return _upstream.status_error(  # a 3xx was not followed: see _client()
            status,
            detail,
            provider=self.name,
            secret=api_key,
            retry_after=_upstream.retry_after(exc.response.headers),
        )


def _input_tokens(usage: Any) -> int | None:
    tokens = getattr(usage, "input_tokens", None)
    if tokens is None:
        return None
    cached = (getattr(usage, "cache_creation_input_tokens", None) or 0) + (
        getattr(usage, "cache_read_input_tokens", None) or 0
    )
    return int(tokens) + int(cached)
