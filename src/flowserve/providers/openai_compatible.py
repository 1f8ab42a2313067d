"""Any server speaking OpenAI chat completions: vLLM, llama.cpp's ``llama-server``, Ollama…

The protocol (request body, SSE chunks, usage, the end marker) is
:class:`~flowserve.providers.openai.OpenAIProvider`'s; this provider changes *where*
(``base_url`` from the node or the provider settings), *with which key* (optional: the node's
or the settings' ``api_key_env``; without one a placeholder is sent, as these servers usually
ignore it), which name ``max_tokens`` travels under (the classic one), and *how the bytes
travel*.

Why not the openai SDK here: these servers usually sit next to flowserve, so what the relay
adds per request is most of what a user waits for beyond the model itself. Measured on this
machine against the benchmark's fake upstream (sequential streaming requests), the SDK costs
about 1.4 ms of CPU per request and httpx alone about 1.0 ms (a cancel scope per socket read,
a liveness check per pooled connection), against 0.14 ms for aiohttp, whose HTTP parser is in
C. So the request goes out through an ``aiohttp`` session (imported lazily) with a large
keep-alive pool; errors are mapped here by HTTP status and exception type, like the other
adapters. The OpenAI provider itself keeps the SDK: its round trips are far longer than
what the SDK costs. Proxies are taken from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``,
``NO_PROXY``) as httpx does, but once per base URL: aiohttp's own ``trust_env`` reads them, and
``~/.netrc``, on a worker thread for every request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import orjson

from flowserve import __version__
from flowserve.errors import (
    ProviderBadRequestError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUpstreamError,
)
from flowserve.providers import _upstream
from flowserve.providers.base import LLMRequest, ProviderEnv
from flowserve.providers.openai import OpenAIProvider

if TYPE_CHECKING:
    import aiohttp

_CONNECT_TIMEOUT = 10.0
_MAX_ERROR_BODY = 64 * 1024  # an error body is read this far, no further


class OpenAICompatibleProvider(OpenAIProvider):
    name = "openai-compatible"
    default_model = None
    default_key_env = None
    _max_tokens_param = "max_tokens"

    def __init__(self, env: ProviderEnv) -> None:
        super().__init__(env)
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, dict[str, str]] = {}  # per key: built once
        self._targets: dict[str, tuple[str, str | None]] = {}  # base URL -> (URL, proxy)

    def key_env(self, api_key_env: str | None) -> str | None:
        return api_key_env or self.env.settings.get("api_key_env")

    def _base_url(self, request: LLMRequest) -> str:
        base_url = request.base_url or self.env.settings.get("base_url")
        if not base_url:
            raise ProviderBadRequestError(
                "no base_url: set it on the node or in the openai-compatible provider settings",
                provider=self.name,
            )
        return str(base_url)

    def _http(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0)
            session = self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, connect=_CONNECT_TIMEOUT),
                skip_auto_headers=("User-Agent",),
            )
        return session

    def _target(self, base_url: str) -> tuple[str, str | None]:
        """The chat completions URL under ``base_url``, and the proxy the environment names
        for it (``None``: connect directly)."""
        target = self._targets.get(base_url)
        if target is None:
            import urllib.request
            from urllib.parse import urlsplit

            url = base_url.rstrip("/") + "/chat/completions"
            parts = urlsplit(url)
            proxies = urllib.request.getproxies_environment()
            proxy = proxies.get(parts.scheme) or proxies.get("all")
            if proxy and urllib.request.proxy_bypass(parts.hostname or ""):
                proxy = None
            target = self._targets[base_url] = (url, proxy or None)
        return target

    def _request_headers(self, api_key: str) -> dict[str, str]:
        headers = self._headers.get(api_key)
        if headers is None:
            headers = self._headers[api_key] = {
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "Accept": "text/event-stream",
                "User-Agent": f"flowserve/{__version__}",
            }
        return headers

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @asynccontextmanager
    async def _send(
        self, base_url: str, api_key: str, params: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        url, proxy = self._target(base_url)
        response = await self._http().post(
            url, data=orjson.dumps(params), headers=self._request_headers(api_key), proxy=proxy
        )
        try:
            if response.status >= 300:
                body = await response.content.read(_MAX_ERROR_BODY)
                raise self._http_error(response.status, response.headers, body, api_key)
            yield response.content.iter_any()
        finally:
            if response.content.at_eof():
                response.release()  # the whole body was read: the connection is reusable
            else:
                response.close()  # mid-body (cancelled, failed): drop it, upstream stops

    def _http_error(self, status: int, headers: Any, body: bytes, api_key: str) -> ProviderError:
        detail = _error_detail(body)
        message = _upstream.clean_message(detail or f"upstream returned HTTP {status}", api_key)
        return _upstream.error_for_status(status)(
            message, provider=self.name, status=status, retry_after=_upstream.retry_after(headers)
        )

    @contextmanager
    def _map_errors(self, api_key: str) -> Iterator[dict[str, bool]]:
        """aiohttp's exceptions as flowserve errors, by type."""
        import aiohttp

        state = {"connected": False}
        try:
            yield state
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise ProviderTimeoutError("upstream timed out", provider=self.name) from exc
        except aiohttp.ClientConnectorError as exc:
            raise ProviderUpstreamError(_upstream.CONNECT_FAILED, provider=self.name) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            message = _upstream.CONNECTION_LOST if state["connected"] else _upstream.CONNECT_FAILED
            raise ProviderUpstreamError(message, provider=self.name) from exc
        except orjson.JSONDecodeError as exc:
            raise ProviderUpstreamError("upstream sent malformed data", provider=self.name) from exc


def _error_detail(body: bytes) -> str | None:
    """The message of an error body: ``{"error": {"message"}}`` (OpenAI, vLLM, llama.cpp),
    ``{"message"}`` (older vLLM), ``{"error": "…"}`` (Ollama); ``None`` if there is none."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, str):
        return error
    source = error if isinstance(error, dict) else data
    message = source.get("message")
    return message if isinstance(message, str) else None
