"""Provider registry, fed by the ``flowserve.providers`` entry-point group.

Built-in providers register exactly like third-party ones (see ``pyproject.toml``), so adding
a provider is one module plus one line there; nothing in the core changes.
"""

from __future__ import annotations

import threading
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from flowserve.errors import ConfigError
from flowserve.providers.base import Provider, ProviderEnv
from flowserve.providers.endpoints import EndpointPolicy

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

ENTRY_POINT_GROUP = "flowserve.providers"
# providers for tests and demos, loaded only with the ``test_providers`` setting
TEST_ENTRY_POINT_GROUP = "flowserve.test_providers"
__all__ = ["ENTRY_POINT_GROUP", "TEST_ENTRY_POINT_GROUP", "EndpointPolicy", "ProviderRegistry"]


class ProviderRegistry:
    def __init__(
        self, env: ProviderEnv, default: str = "local", policy: EndpointPolicy | None = None
    ) -> None:
        self._env = env
        self.default = default  # used by nodes that name no provider
        self.policy = policy or EndpointPolicy()
        self._classes: dict[str, type[Provider]] = {}
        self._instances: dict[str, Provider] = {}
        self._lazy: dict[str, Any] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_entry_points(
        cls,
        env: ProviderEnv,
        default: str = "local",
        policy: EndpointPolicy | None = None,
        test_providers: bool = False,
    ) -> ProviderRegistry:
        registry = cls(env, default, policy)
        groups = [ENTRY_POINT_GROUP] + ([TEST_ENTRY_POINT_GROUP] if test_providers else [])
        for group in groups:
            for ep in entry_points(group=group):
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
            with self._lock:
                if name not in self._classes:
                    self._classes[name] = self._lazy[name].load()
        return self._classes[name]

    def get(self, name: str) -> Provider:
        instance = self._instances.get(name)
        if instance is None:
            # Flows are compiled on worker threads (publishing): one instance per provider.
            with self._lock:
                instance = self._instances.get(name)
                if instance is None:
                    cls = self.provider_class(name)
                    section = self._env.settings.get(name, {})
                    instance = cls(ProviderEnv(environ=self._env.environ, settings=section))
                    self._instances[name] = instance
        return instance

    def collectors(self) -> list[Collector]:
        """The collectors of the providers in use so far (see :meth:`Provider.collectors`);
        a provider no flow has used yet has made none."""
        with self._lock:
            instances = list(self._instances.values())
        return [collector for instance in instances for collector in instance.collectors()]

    async def aclose(self) -> None:
        for instance in self._instances.values():
            await instance.aclose()
        self._instances.clear()
