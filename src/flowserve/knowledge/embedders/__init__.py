"""Embedders: what turns chunk text into vectors for dense (semantic) retrieval.

An embedding model is named ``<embedder>.<model>`` (``openai.text-embedding-3-small``,
``openai-compatible.nomic-embed-text``, ``local.smollm2-135m``). Embedders register through
the ``flowserve.embedders`` entry-point group (``pyproject.toml``), built-in ones exactly like
plugins, so nothing outside an embedder's own module names it. Each is configured by the
settings section of the same name (``providers: {openai-compatible: {base_url: …}}``), the
one its LLM provider reads.
"""

from __future__ import annotations

import threading
from importlib.metadata import entry_points
from typing import Any

from flowserve.errors import ConfigError
from flowserve.knowledge.embedders.base import Embedder
from flowserve.providers.base import ProviderEnv
from flowserve.providers.endpoints import EndpointPolicy

ENTRY_POINT_GROUP = "flowserve.embedders"
__all__ = ["ENTRY_POINT_GROUP", "Embedder", "EmbedderRegistry", "split_name"]


def split_name(name: str) -> tuple[str, str]:
    """``openai.text-embedding-3-small`` → (``openai``, ``text-embedding-3-small``)."""
    embedder, dot, model = name.partition(".")
    if not dot or not embedder or not model:
        raise ConfigError(f"embedding model {name!r} is not of the form <provider>.<model>")
    return embedder, model


class EmbedderRegistry:
    def __init__(self, env: ProviderEnv, policy: EndpointPolicy | None = None) -> None:
        self.env = env
        self.policy = policy or EndpointPolicy()
        self._lazy: dict[str, Any] = {}
        self._instances: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_entry_points(
        cls, env: ProviderEnv, policy: EndpointPolicy | None = None
    ) -> EmbedderRegistry:
        registry = cls(env, policy)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            registry.register_lazy(ep.name, ep)
        return registry

    def register_lazy(self, name: str, entry_point: Any) -> None:
        self._lazy[name] = entry_point  # imported (with its SDK) only when first used

    def names(self) -> list[str]:
        return sorted(self._lazy)

    def get(self, name: str) -> Embedder:
        with self._lock:
            instance = self._instances.get(name)
            if instance is None:
                if name not in self._lazy:
                    raise ConfigError(
                        f"unknown embedding provider {name!r} (known: {', '.join(self.names())})"
                    )
                cls = self._lazy[name].load()
                section = self.env.settings.get(name, {})
                env = ProviderEnv(environ=self.env.environ, settings=section)
                instance = self._instances[name] = cls(env, self.policy)
        return instance

    def problem(self, full_name: str) -> str | None:
        """Why ``full_name`` cannot be used on this server, or None if it can."""
        try:
            embedder, model = split_name(full_name)
            return self.get(embedder).problem(model)
        except ConfigError as exc:
            return exc.message

    async def embed(self, full_name: str, texts: list[str]) -> list[list[float]]:
        embedder, model = split_name(full_name)
        return await self.get(embedder).embed_all(texts, model)

    async def aclose(self) -> None:
        for instance in list(self._instances.values()):
            await instance.aclose()
        self._instances.clear()
