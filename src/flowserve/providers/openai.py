"""OpenAI Chat Completions: the protocol, and the OpenAI provider.

The protocol (how to speak chat completions: the request body, the SSE chunks, usage, the end
marker) is :class:`OpenAIProvider`; ``openai-compatible``
(:mod:`flowserve.providers.openai_compatible`) changes *where*, *with which key*, which name
``max_tokens`` travels under and how the bytes travel (:meth:`OpenAIProvider._send`). OpenAI
itself is reached through the official ``openai`` SDK, imported lazily.

Non-obvious choices:

* ``stream_options={"include_usage": True}``: usage arrives on a final chunk whose
  ``choices`` is empty; it is copied into ``request.usage``.
* The end marker is a ``finish_reason`` on some chunk. A stream that ends without one (clean
  EOF, or ``[DONE]`` alone) raises :class:`ProviderTruncatedError`. Servers that put the
  ``finish_reason`` on the last text chunk (vLLM), send ``content: null`` (llama.cpp), repeat
  ``role`` on every chunk (Ollama), add unknown fields, or end after the usage chunk without
  ``[DONE]`` all work; chunks are read defensively (any field may be missing or null).
* The request goes through the client's generic ``post`` (the SDK still builds, signs, sends
  and maps HTTP errors) rather than the typed ``chat.completions.create``, whose parameter
  transformation costs about 0.25 ms per call and only re-checks what our Options model
  already validated. The body is read raw and parsed with orjson by
  :mod:`flowserve.providers._sse`: the SDK still builds, signs and sends the request and maps
  HTTP errors, but its per-chunk model objects cost more than everything else flowserve does
  per token (bench/RESULTS.md has the profile).
* ``max_tokens`` maps to ``max_completion_tokens`` for OpenAI (newer models reject
  ``max_tokens``) and to ``max_tokens`` for compatible servers (which may not know the other).
* The SDK's own retries are off (``max_retries=0``): retrying belongs to
  :mod:`flowserve.providers.resilience`, which knows whether a token was already sent.
* Its redirects are off too (the SDK's client follows them by default), and a 2xx that is
  not ``text/event-stream`` is not read as one: both as :mod:`flowserve.providers._upstream`
  explains.
* The response is closed in ``finally`` (shielded from cancellation), so cancelling the
  consumer drops the upstream connection at once.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import orjson
from pydantic import Field, ValidationError

from flowserve.errors import (
    ProviderBadRequestError,
    ProviderError,
    ProviderTruncatedError,
    ProviderUpstreamError,
)
from flowserve.providers import _upstream
from flowserve.providers._sse import sse_data
from flowserve.providers.base import LLMRequest, NodeOptions, Provider, ProviderEnv

if TYPE_CHECKING:
    from openai import APIStatusError, AsyncOpenAI

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Generous on purpose: resilience.py enforces the real time limits.
_READ_TIMEOUT = 900.0
_CONNECT_TIMEOUT = 10.0
_CLOSE_GRACE = 2.0
_DRAIN_GRACE = 0.5


class OpenAIOptions(NodeOptions):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: list[str] | None = Field(default=None, min_length=1, max_length=4)


class OpenAIProvider(Provider):
    name = "openai"
    Options: ClassVar[type[NodeOptions]] = OpenAIOptions
    default_model: ClassVar[str | None] = "gpt-4o-mini"
    default_key_env: ClassVar[str | None] = "OPENAI_API_KEY"
    _max_tokens_param: ClassVar[str] = "max_completion_tokens"

    def __init__(self, env: ProviderEnv) -> None:
        super().__init__(env)
        self._clients: dict[tuple[str, str], AsyncOpenAI] = {}
        self._options_cache: dict[bytes, dict[str, Any]] = {}
        self.max_connections = int(env.settings.get("max_connections", 10_000))

    # -- where and with which key (what the compatible provider overrides) --

    def _base_url(self, request: LLMRequest) -> str:
        return request.base_url or self.env.settings.get("base_url") or DEFAULT_BASE_URL

    def _api_key(self, request: LLMRequest) -> str:
        variable = self.key_env(request.api_key_env)
        if variable is None:  # only a provider without a default key env gets here
            return "not-needed"
        key = self.env.environ.get(variable)
        if not key:
            raise _upstream.missing_key(self.name, variable)
        return key

    def _client(self, base_url: str, api_key: str) -> AsyncOpenAI:
        client = self._clients.get((base_url, api_key))
        if client is None:
            import openai

            timeout = openai.Timeout(_READ_TIMEOUT, connect=_CONNECT_TIMEOUT)
            # The SDK's default pool (1,000 connections, 100 kept alive) capped the streams one
            # server could relay and made it reconnect under load; a relay needs more.
            client = openai.AsyncOpenAI(
                api_key=api_key,
                base_url=base_url,
                max_retries=0,
                timeout=timeout,
                http_client=openai.DefaultAsyncHttpxClient(
                    timeout=timeout,
                    follow_redirects=False,  # the SDK's default follows, key and all
                    limits=_http_module().Limits(
                        max_connections=self.max_connections,
                        max_keepalive_connections=self.max_connections,
                    ),
                ),
            )
            self._clients[(base_url, api_key)] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    # -- the protocol --

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        return {
            "model": request.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self._option_params(request.options),
        }

    def _option_params(self, options: dict[str, Any]) -> dict[str, Any]:
        """The request fields a node's options become. Validated once per distinct options
        (a node's are fixed): pydantic's validate and dump cost more than the rest of
        building the request."""
        key = orjson.dumps(options, option=orjson.OPT_SORT_KEYS)
        values = self._options_cache.get(key)
        if values is None:
            try:
                validated = self.Options.model_validate(options)
            except ValidationError as exc:
                raise ProviderBadRequestError(
                    f"invalid options: {exc.errors()[0]['msg']}", provider=self.name
                ) from exc
            values = validated.model_dump(exclude_none=True)
            if "max_tokens" in values:
                values[self._max_tokens_param] = values.pop("max_tokens")
            if len(self._options_cache) >= 1024:
                self._options_cache.clear()
            self._options_cache[key] = values  # temperature, top_p, stop keep their names
        return values

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        api_key = self._api_key(request)  # before any network call
        base_url = self._base_url(request)
        params = self._params(request)
        finished = False
        usage = request.usage
        with self._map_errors(api_key) as state:
            async with self._send(base_url, api_key, params) as body:
                state["connected"] = True
                events = sse_data(body)
                async for data in events:
                    if data.startswith(b"[DONE]"):
                        # Read the (empty) rest of the body, so that the connection goes
                        # back to the pool instead of being closed: a new TCP connection
                        # per run was a visible share of the time to first token.
                        with anyio.move_on_after(_DRAIN_GRACE):
                            async for _ in events:
                                pass
                        break
                    chunk = orjson.loads(data)
                    if type(chunk) is not dict:
                        continue
                    if chunk.get("error"):
                        raise self._stream_error(chunk["error"], api_key)
                    if (counts := chunk.get("usage")) and type(counts) is dict:
                        usage.prompt_tokens = counts.get("prompt_tokens")
                        usage.completion_tokens = counts.get("completion_tokens")
                    for choice in chunk.get("choices") or ():
                        if type(choice) is not dict or choice.get("index", 0) not in (0, None):
                            continue  # n > 1 is never requested; ignore stray choices
                        delta = choice.get("delta")
                        text = delta.get("content") if type(delta) is dict else None
                        if text and type(text) is str:
                            yield text
                        if choice.get("finish_reason"):
                            finished = True
        if not finished:
            raise ProviderTruncatedError(_upstream.TRUNCATED, provider=self.name)

    @asynccontextmanager
    async def _send(
        self, base_url: str, api_key: str, params: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """POST the request; yield the raw body, once the response status was 2xx."""
        client = self._client(base_url, api_key)
        # The SDK builds, authenticates and sends the request and maps HTTP errors; the
        # body is read raw and parsed with orjson, because the SDK's per-chunk pydantic
        # objects were the largest cost in the relay profile (bench/RESULTS.md).
        response: Any = await client.post(
            "/chat/completions", cast_to=_http_module().Response, body=params, stream=True
        )
        try:
            await _upstream.require_event_stream(
                response.status_code, response.headers, response.aiter_bytes, self.name, api_key
            )
            yield response.aiter_bytes()
        finally:
            with anyio.move_on_after(_CLOSE_GRACE, shield=True):
                await response.aclose()

    def _stream_error(self, error: Any, api_key: str) -> ProviderError:
        """``data: {"error": {...}}`` inside a 200 stream (OpenAI, vLLM, llama.cpp)."""
        message = error.get("message") if isinstance(error, dict) else error
        text = message if isinstance(message, str) else ""
        return ProviderUpstreamError(
            _upstream.clean_message(text, api_key) or "upstream stream failed",
            provider=self.name,
        )

    def _map_errors(self, api_key: str) -> AbstractContextManager[dict[str, bool]]:
        """The SDK's and its HTTP library's exceptions, by kind (:func:`_upstream.map_errors`)."""
        import openai

        return _upstream.map_errors(
            self.name,
            status=(openai.APIStatusError,),
            read_status=lambda exc: self._status_error(exc, api_key),
            timeout=(openai.APITimeoutError, *_upstream.timeout_errors()),
            # Recent openai versions also wrap a drop while reading the body in this.
            connection=(openai.APIConnectionError,),
            # Most versions do not wrap what breaks while the body is read.
            lost=_upstream.transport_errors(),
            # An error event inside a 200 stream: ``data: {"error": {...}}``.
            event=(openai.APIError,),
            event_message=lambda exc: (
                _upstream.clean_message(exc.message, api_key) or "upstream stream failed"
            ),
            malformed=(json.JSONDecodeError, orjson.JSONDecodeError),
        )

    def _status_error(self, exc: APIStatusError, api_key: str) -> ProviderError:
        # The SDK unwraps ``{"error": {...}}``; compatible servers may send a flat object.
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("message")
        return _upstream.status_error(  # a 3xx was not followed: see _client()
            exc.status_code,
            detail if isinstance(detail, str) else None,
            provider=self.name,
            secret=api_key,
            retry_after=_upstream.retry_after(exc.response.headers),
        )


@functools.cache
def _http_module() -> Any:
    """The SDK's HTTP library: ``httpx`` before openai 3.0, ``httpx2`` since. Its Response
    class as ``cast_to`` makes ``post`` hand back the raw streaming response."""
    import importlib

    import openai

    for cls in openai.DefaultAsyncHttpxClient.__mro__:  # the SDK subclasses its client
        package = cls.__module__.split(".")[0]
        if package.startswith("httpx"):
            return importlib.import_module(package)
    raise RuntimeError("cannot find the openai SDK's HTTP library")
