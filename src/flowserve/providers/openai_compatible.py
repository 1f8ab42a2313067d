"""Any server speaking OpenAI chat completions: vLLM, llama.cpp's ``llama-server``, Ollama…

The protocol (request body, SSE chunks, usage, the end marker) is
:class:`~flowserve.providers.openai.OpenAIProvider`'s; this provider changes *where*
(``base_url`` from the node or the provider settings), *with which key* (optional: the node's
or the settings' ``api_key_env``; without one a placeholder is sent, as these servers usually
ignore it), which name ``max_tokens`` travels under (the classic one), and *how the bytes
travel*.

Why not the openai SDK here: these servers usually sit next to flowserve, so what the relay
adds per request is most of what a user waits for beyond the model itself, and the SDK costs
about 1.1 ms of CPU per streamed request on this machine (httpx alone 0.74 ms). Direct
connections go through :mod:`flowserve.providers._http1` (0.07 ms); a proxy named by
the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``, read once per base URL) is
used through httpx. Errors are mapped here by HTTP status and exception type, like the other
adapters; neither client follows redirects, and a 2xx is read as a stream only if its content
type allows (a header look-up per request, as :mod:`flowserve.providers._upstream` explains).
The OpenAI provider itself keeps the SDK: its round trips are far longer than what
the SDK costs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any

import anyio
import httpx
import orjson

from flowserve import __version__
from flowserve.errors import ProviderBadRequestError, ProviderError
from flowserve.providers import _http1, _upstream
from flowserve.providers.base import LLMRequest, ProviderEnv
from flowserve.providers.openai import OpenAIProvider

_CONNECT_TIMEOUT = 10.0


class OpenAICompatibleProvider(OpenAIProvider):
    name = "openai-compatible"
    default_model = None
    default_key_env = None
    _max_tokens_param = "max_tokens"

    def __init__(self, env: ProviderEnv) -> None:
        super().__init__(env)
        self._pool = _http1.Pool(_CONNECT_TIMEOUT, max_idle=self.max_connections)
        self._proxied: dict[str, httpx.AsyncClient] = {}  # proxy URL -> client
        self._targets: dict[str, tuple[str, str | None]] = {}  # base URL -> (URL, proxy)
        self._heads: dict[tuple[str, str], _http1.Target] = {}  # (URL, key) -> request head

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

    def _target(self, base_url: str) -> tuple[str, str | None]:
        """The chat completions URL under ``base_url``, and the proxy the environment names
        for it (``None``: connect directly)."""
        target = self._targets.get(base_url)
        if target is None:
            import urllib.request
            from urllib.parse import urlsplit

            url = base_url.rstrip("/") + "/chat/completions"
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ProviderBadRequestError(
                    f"base_url must be an http(s) URL, not {base_url!r}", provider=self.name
                )
            proxies = urllib.request.getproxies_environment()
            proxy = proxies.get(parts.scheme) or proxies.get("all")
            if proxy and urllib.request.proxy_bypass(parts.hostname):
                proxy = None
            target = self._targets[base_url] = (url, proxy or None)
        return target

    def _headers(self, api_key: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": f"flowserve/{__version__}",
        }

    async def aclose(self) -> None:
        await self._pool.aclose()
        clients, self._proxied = list(self._proxied.values()), {}
        for client in clients:
            await client.aclose()

    @asynccontextmanager
    async def _send(
        self, base_url: str, api_key: str, params: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        url, proxy = self._target(base_url)
        body = orjson.dumps(params)
        if proxy is not None:
            async with self._send_through(proxy, url, api_key, body) as chunks:
                yield chunks
            return
        head = self._heads.get((url, api_key))
        if head is None:
            head = self._heads[(url, api_key)] = _http1.Target(url, self._headers(api_key))
        response = await self._pool.post(head, b"", body)
        try:
            if response.status >= 300:
                detail = await response.read(_upstream.MAX_ERROR_BODY)
                raise self._http_error(response.status, response.headers, detail, api_key)
            await _upstream.require_event_stream(
                response.status, response.headers, response.chunks, self.name, api_key
            )
            yield response.chunks()
        finally:
            response.close()  # back to the pool if read to the end, else closed: upstream stops

    @asynccontextmanager
    async def _send_through(
        self, proxy: str, url: str, api_key: str, body: bytes
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        client = self._proxied.get(proxy)
        if client is None:
            timeout = httpx.Timeout(None, connect=_CONNECT_TIMEOUT)
            client = self._proxied[proxy] = httpx.AsyncClient(
                proxy=proxy, trust_env=False, timeout=timeout, follow_redirects=False
            )
        request = client.build_request("POST", url, content=body, headers=self._headers(api_key))
        response = await client.send(request, stream=True)
        try:
            if response.status_code >= 300:
                detail = await _upstream.read_capped(response.aiter_bytes())
                raise self._http_error(response.status_code, response.headers, detail, api_key)
            await _upstream.require_event_stream(
                response.status_code, response.headers, response.aiter_bytes, self.name, api_key
            )
            yield response.aiter_bytes()
        finally:
            with anyio.move_on_after(2.0, shield=True):
                await response.aclose()

    def _http_error(self, status: int, headers: Any, body: bytes, api_key: str) -> ProviderError:
        return _upstream.status_error(  # neither client follows a 3xx
            status,
            _error_detail(body),
            provider=self.name,
            secret=api_key,
            retry_after=_upstream.retry_after(headers),
        )

    def _map_errors(self, api_key: str) -> AbstractContextManager[dict[str, bool]]:
        """Transport exceptions (ours and httpx's, for proxied requests), by kind
        (:func:`_upstream.map_errors`); HTTP error statuses are raised by :meth:`_send`."""
        return _upstream.map_errors(
            self.name,
            connect_failed=(_http1.ConnectFailed, httpx.ConnectError, httpx.ProxyError),
            timeout=(httpx.TimeoutException,),
            connection=(_http1.ConnectionLost, httpx.TransportError, ConnectionError),
            malformed=(orjson.JSONDecodeError,),
        )


def _error_detail(body: bytes) -> str | None:
    """The message of an error status's body (:func:`_upstream.error_object`, any object
    counting as flat: older vLLM sends ``{"message"}``); ``None`` if there is none."""
    error = _upstream.error_object(body, flat=True)
    message = error.get("message") if error is not None else None
    return message if isinstance(message, str) else None
