"""Provider registry, fed by the ``flowserve.providers`` entry-point group.

Built-in providers register exactly like third-party ones (see ``pyproject.toml``), so adding
a provider is one module plus one line there; nothing in the core changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from importlib.metadata import entry_points
from typing import Any

from flowserve.errors import ConfigError
from flowserve.providers.base import Provider, ProviderEnv

ENTRY_POINT_GROUP = "flowserve.providers"


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    """What a flow *file* may point a provider at. Flow publishers are not operators: without
    this, a node with ``base_url: https://attacker.example`` and ``api_key_env: OPENAI_API_KEY``
    would send the server's key to the publisher. Endpoints set by the operator in the provider
    settings are not subject to it."""

    allowed_base_urls: tuple[str, ...] = ("http://127.0.0.1", "http://localhost", "http://[::1]")
    allowed_key_envs: tuple[str, ...] = ("*_API_KEY", "*_API_TOKEN")

    def base_url_problem(self, url: str) -> str | None:
        for prefix in self.allowed_base_urls:
            prefix = prefix.rstrip("/")
            if url == prefix or url.startswith((prefix + "/", prefix + ":")):
                return None
        return f"base_url {url!r} is not allowed by this server (settings: allowed_base_urls)"

    def key_env_problem(self, name: str) -> str | None:
        if any(fnmatchcase(name, pattern) for pattern in self.allowed_key_envs):
            return None
        return f"api_key_env {name!r} is not allowed by this server (settings: allowed_key_envs)"


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

    @classmethod
    def from_entry_points(
        cls, env: ProviderEnv, default: str = "local", policy: EndpointPolicy | None = None
    ) -> ProviderRegistry:
        registry = cls(env, default, policy)
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
