"""The embedder contract: what an embedding adapter implements."""

from __future__ import annotations

from typing import ClassVar

from flowserve.errors import ProviderUpstreamError
from flowserve.providers.base import ProviderEnv
from flowserve.providers.endpoints import EndpointPolicy


class Embedder:
    """Base class of embedding adapters.

    Subclasses set ``name`` and implement :meth:`embed` (one batch of at most
    :attr:`batch_size` texts, one vector per text, in order) and :meth:`problem`. They raise
    only ``ProviderError`` subclasses, with messages that never contain a key.
    """

    name: ClassVar[str]
    batch_size: ClassVar[int] = 64

    def __init__(self, env: ProviderEnv, policy: EndpointPolicy) -> None:
        self.env = env
        self.policy = policy

    def problem(self, model: str) -> str | None:
        """Why ``model`` cannot be used here (not configured, unknown), or None."""
        return None if model else "model must not be empty"

    def dimensions(self, model: str) -> int | None:
        """The length of the model's vectors, if known before the first call."""
        return None

    async def embed(self, texts: list[str], model: str) -> list[list[float]]:
        raise NotImplementedError

    async def embed_all(self, texts: list[str], model: str) -> list[list[float]]:
        """:meth:`embed` batch by batch; checks one vector per text, all of one length."""
        size = int(self.env.settings.get("embedding_batch_size", self.batch_size))
        vectors: list[list[float]] = []
        for start in range(0, len(texts), max(size, 1)):
            batch = texts[start : start + size]
            got = await self.embed(batch, model)
            if len(got) != len(batch):
                raise ProviderUpstreamError(
                    f"asked for {len(batch)} embeddings, got {len(got)}", provider=self.name
                )
            vectors.extend(got)
        if len({len(v) for v in vectors}) > 1 or any(not v for v in vectors):
            raise ProviderUpstreamError("embeddings of different lengths", provider=self.name)
        return vectors

    async def aclose(self) -> None:
        """Release clients and models."""
