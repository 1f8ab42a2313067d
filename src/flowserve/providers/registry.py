"""Provider registry, fed by the ``flowserve.providers`` entry-point group.

Built-in providers register exactly like third-party ones (see ``pyproject.toml``), so adding
a provider is one module plus one line there; nothing in the core changes.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from flowserve.errors import ConfigError
from flowserve.providers.base import Provider, ProviderEnv

ENTRY_POINT_GROUP = "flowserve.providers"


class ProviderRegistry:
    def __init__(self, env: ProviderEnv, default: str = "local") -> None:
        self._env = env
        self.default = default  # used by nodes that name no provider
        self._classes: dict[str, type[Provider]] = {}
        self._instances: dict[str, Provider] = {}
        self._lazy: dict[str, Any] = {}

    @classmethod
    def from_entry_points(cls, env: ProviderEnv, default: str = "local") -> ProviderRegistry:
        registry = cls(env, default)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            registry.register_lazy(ep.name, ep)
        return registry

    def register(self, name: str, provider_cls: type[Provider]) -> None:
        self._classes[name] = provider_cls
        self._instances.pop(name, None)

    def register_lazy(self, name: str, entry_point: Any) -> None:
        # The module (and so the provider SDK) is imported only when first used.
        self._lazy[name] = entry_point

    def names(self) -> list[str]:
        return sorted(set(self._classes) | set(self._lazy))

    def provider_class(self, name: str) -> type[Provider]:
        if name not in self._classes:
            if name not in self._lazy:
                raise ConfigError(f"unknown provider {name!r} (known: {', '.join(self.names())})")
            self._classes[name] = self._lazy[name].load()
        return self._classes[name]

    def get(self, name: str) -> Provider:
        instance = self._instances.get(name)
        if instance is None:
            cls = self.provider_class(name)
            section = self._env.settings.get(name, {})
            instance = cls(ProviderEnv(environ=self._env.environ, settings=section))
            self._instances[name] = instance
        return instance

    async def aclose(self) -> None:
        for instance in self._instances.values():
            await instance.aclose()
        self._instances.clear()
