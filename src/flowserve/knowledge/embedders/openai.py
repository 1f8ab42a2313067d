"""OpenAI's embeddings (``POST /v1/embeddings``) through the official ``openai`` SDK.

The key is read from ``OPENAI_API_KEY`` (or the variable named by the ``openai`` settings
section's ``api_key_env``); ``base_url`` in that section points the SDK elsewhere (a proxy).
The model is configured when the key is set; the known models' dimensions are listed, any
other name is passed through (OpenAI answers 404 for a model it does not have).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flowserve.errors import (
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderError,
    ProviderRateLimitError,
    ProviderTimeoutError,
    ProviderUpstreamError,
)
from flowserve.knowledge.embedders.base import Embedder

DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_TIMEOUT = 60.0


class OpenAIEmbedder(Embedder):
    name = "openai"
    batch_size = 256  # OpenAI takes up to 2048 inputs a request
    default_key_env: str | None = "OPENAI_API_KEY"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._clients: dict[tuple[str | None, str], Any] = {}

    def key_env(self) -> str | None:
        return self.env.settings.get("api_key_env") or self.default_key_env

    def api_key(self) -> str | None:
        var = self.key_env()
        return self.env.environ.get(var) if var else None

    def base_url(self) -> str | None:
        url = self.env.settings.get("base_url")
        return str(url) if url else None

    def problem(self, model: str) -> str | None:
        if not model:
            return "model must not be empty"
        if not self.api_key():
            return f"{self.name} is not configured on this server ({self.key_env()} is not set)"
        return None

    def dimensions(self, model: str) -> int | None:
        return DIMENSIONS.get(model)

    def _client(self) -> Any:
        from openai import AsyncOpenAI

        key = self.api_key() or "not-needed"
        base_url = self.base_url()
        client = self._clients.get((base_url, key))
        if client is None:
            client = self._clients[(base_url, key)] = AsyncOpenAI(
                api_key=key, base_url=base_url, timeout=_TIMEOUT, max_retries=2
            )
        return client

    async def embed(self, texts: list[str], model: str) -> list[list[float]]:
        with self._errors():
            response = await self._client().embeddings.create(
                model=model, input=texts, encoding_format="float"
            )
        ordered = sorted(response.data, key=lambda item: item.index)
        return [list(item.embedding) for item in ordered]

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The SDK's exceptions as ours, by type; upstream messages are not repeated (an
        OpenAI 401 echoes the key it was given)."""
        import openai

        try:
            yield
        except openai.APIStatusError as exc:
            status = exc.status_code
            kinds: dict[int, type[ProviderError]] = {
                401: ProviderAuthError,
                403: ProviderAuthError,
                429: ProviderRateLimitError,
            }
            kind = kinds.get(status) or (
                ProviderBadRequestError if status < 500 else ProviderUpstreamError
            )
            raise kind(
                f"embeddings request refused: HTTP {status}", provider=self.name, status=status
            ) from None
        except openai.APITimeoutError:
            raise ProviderTimeoutError("embeddings request timed out", provider=self.name) from None
        except openai.APIConnectionError:
            raise ProviderUpstreamError(
                "could not reach the embeddings server", provider=self.name
            ) from None

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
