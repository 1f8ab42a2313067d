"""The composition root: stores, providers and services, built once from Settings and handed
down. Nothing here speaks HTTP: ``flowserve run`` builds the same services without importing
``flowserve.http``, and the HTTP app adds only its own edge (limits, pacing) on top."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

from flowserve.auth import Principal, parse_bearer
from flowserve.cache import RefreshingCache
from flowserve.config import Settings
from flowserve.errors import AuthError, FlowserveError, ForbiddenError
from flowserve.flows.service import FlowService
from flowserve.flows.spec import LLMNodeSpec
from flowserve.providers.base import ProviderEnv
from flowserve.providers.endpoints import EndpointPolicy
from flowserve.providers.registry import ProviderRegistry
from flowserve.providers.resilience import RetryPolicy
from flowserve.runs.runner import Runner, TextLimits
from flowserve.runs.service import RunService
from flowserve.store.database import Database
from flowserve.store.flows import FlowStore
from flowserve.store.instances import InstanceStore
from flowserve.store.keys import KeyStore
from flowserve.store.memory import MemoryStore
from flowserve.store.runs import RunStore

log = logging.getLogger("flowserve")


@dataclass
class Services:
    settings: Settings
    db: Database
    registry: ProviderRegistry
    keys: KeyStore
    flows: FlowService
    runs: RunService
    instances: InstanceStore
    key_cache: RefreshingCache[str, Principal]

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.database_url)
        registry = ProviderRegistry.from_entry_points(
            ProviderEnv(environ=dict(os.environ), settings=settings.providers),
            default=settings.default_provider,
            policy=EndpointPolicy(
                tuple(settings.allowed_base_urls), tuple(settings.allowed_key_envs)
            ),
            test_providers=settings.test_providers,
        )
        policy = RetryPolicy(
            max_retries=settings.max_retries,
            ttft_timeout=settings.first_token_timeout,
            total_timeout=settings.node_timeout,
        )
        flows = FlowService(
            FlowStore(db),
            registry,
            settings.flow_cache_ttl,
            settings.max_flow_nodes,
            settings.max_flow_outputs,
        )
        runner = Runner(
            registry,
            policy,
            settings.run_timeout,
            settings.run_idle_timeout,
            TextLimits(settings.max_node_chars, settings.max_run_chars),
        )
        instances = InstanceStore(db, settings.heartbeat_interval)
        runs = RunService(
            RunStore(db),
            MemoryStore(db),
            runner,
            owner=instances.id,
            record_delay=settings.record_delay,
        )
        key_cache = RefreshingCache[str, Principal](settings.key_cache_ttl)
        keys = KeyStore(db)
        return cls(settings, db, registry, keys, flows, runs, instances, key_cache)

    async def authenticate(self, header: str | None, org_id: str | None) -> Principal:
        """The caller's key, which must belong to ``org_id`` (None: a key of any org, for
        routes that name no org). Every failure is the same 401, so a caller cannot learn
        whether an org exists."""
        key_id, secret = parse_bearer(header)
        cache_key = hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()
        principal = await self.key_cache.get(
            cache_key,
            lambda: self.keys.verify(key_id, secret),
            lambda: self.keys.still_active(key_id),
        )
        if org_id is not None and principal.org_id != org_id:
            raise AuthError("invalid API key")
        return principal

    @staticmethod
    def require_private(principal: Principal, action: str) -> None:
        if not principal.is_private:
            raise ForbiddenError(f"a private API key is needed to {action}")

    async def warm_up(self) -> None:
        """Let each provider prepare the models the published flows use (loads the embedded
        model before the first request instead of during it)."""
        pairs: set[tuple[str, str]] = set()
        for org_id, flow_id in await self.flows.store.all_flows():
            try:
                loaded = await self.flows.get(org_id, flow_id)
            except FlowserveError as exc:
                log.warning("flow %s/%s does not load: %s", org_id, flow_id, exc)
                continue
            for node in loaded.flow.nodes.values():
                if isinstance(node.spec, LLMNodeSpec) and node.model:
                    pairs.add((node.provider or self.registry.default, node.model))
        for provider, model in sorted(pairs):
            try:
                await self.registry.get(provider).prepare(model)
            except Exception as exc:
                log.warning("could not warm up %s model %s: %s", provider, model, exc)

    async def aclose(self) -> None:
        await self.registry.aclose()
        await self.db.aclose()
