"""The composition root: stores, providers and services, built once from Settings and handed
down. Nothing here speaks HTTP: ``flowserve run`` builds the same services without importing
``flowserve.http``, and the HTTP app adds only its own edge (limits, pacing) on top."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from flowserve.auth import Principal, parse_bearer
from flowserve.cache import RefreshingCache
from flowserve.cluster.base import Cluster, Invalidation, Spawn
from flowserve.cluster.local import LocalCluster
from flowserve.cluster.redis import HEARTBEAT, RedisCluster
from flowserve.config import Settings
from flowserve.errors import AuthError, FlowserveError, ForbiddenError
from flowserve.flows.service import FlowService
from flowserve.knowledge.service import KnowledgeService
from flowserve.nodes.registry import NodeRegistry
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
    cluster: Cluster  # what this process shares with the others (flowserve.cluster)
    knowledge: KnowledgeService  # knowledge bases and per-user documents

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.database_url)
        instances = InstanceStore(db, settings.heartbeat_interval)
        cluster = _cluster(settings, instances.id)
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
        # The node types (entry points), and what they may use beyond the providers, by name
        # (a knowledge-base node's store): given to their publish checks and their runs.
        nodes = NodeRegistry.from_entry_points()
        node_services: dict[str, Any] = {}
        flows = FlowService(
            FlowStore(db),
            registry,
            settings.flow_cache_ttl,
            settings.max_flow_nodes,
            settings.max_flow_outputs,
            cluster=cluster,
            nodes=nodes,
            node_services=node_services,
        )
        runner = Runner(
            registry,
            policy,
            settings.run_timeout,
            settings.run_idle_timeout,
            TextLimits(settings.max_node_chars, settings.max_run_chars),
            services=node_services,
        )
        runs = RunService(
            RunStore(db),
            MemoryStore(db),
            runner,
            owner=instances.id,
            record_delay=settings.record_delay,
            save_interval=settings.record_save_interval,
            retention=settings.event_retention,
            cluster=cluster,
        )
        # A dead process's runs, failed by a sweep, get what they streamed from their logs.
        instances.on_interrupted = lambda run_ids: runs.recover(run_ids, flows.get)
        key_cache = RefreshingCache[str, Principal](settings.key_cache_ttl)
        keys = KeyStore(db)
        knowledge = KnowledgeService(db, settings, instances.id, flows)
        node_services["knowledge"] = knowledge
        return cls(
            settings, db, registry, keys, flows, runs, instances, key_cache, cluster, knowledge
        )

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

    async def start_cluster(self, spawn: Spawn | None) -> None:
        """Connect to what the processes share and act on its messages, in the caller's task
        group (``spawn``; None: only send, as a command does)."""
        await self.cluster.start(self._stop_here, self._drop_cached, spawn)

    def _stop_here(self, run_id: str, reason: str) -> bool:
        return self.runs.stop(run_id, reason)

    def _drop_cached(self, message: Invalidation) -> None:
        if message.key_id is None and message.flow_id is None:  # everything
            self.key_cache.clear()
            self.flows.latest.clear()
            return
        if message.key_id is not None:
            key_id = message.key_id
            self.key_cache.drop_where(lambda principal: principal.key_id == key_id)
        if message.org_id is not None and message.flow_id is not None:
            self.flows.latest.invalidate((message.org_id, message.flow_id))

    async def revoke_key(self, key_id: str, org_id: str | None = None) -> None:
        """Revoke a key (of ``org_id``, if given: another org's is NotFoundError), refused at
        once by every process: each drops it from its cache."""
        await self.keys.revoke(key_id, org_id)
        await self.cluster.invalidate(Invalidation(key_id=key_id))

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
                if node.provider is not None and node.model:
                    pairs.add((node.provider, node.model))
        for provider, model in sorted(pairs):
            try:
                await self.registry.get(provider).prepare(model)
            except Exception as exc:
                log.warning("could not warm up %s model %s: %s", provider, model, exc)

    async def aclose(self) -> None:
        try:
            await self.cluster.aclose()
        finally:
            await self.registry.aclose()
            await self.knowledge.vectors.embedders.aclose()  # their HTTP clients, local models
            await self.db.aclose()


def _cluster(settings: Settings, owner: str) -> Cluster:
    if not settings.redis_url:
        return LocalCluster(owner)
    return RedisCluster(
        settings.redis_url,
        owner,
        settings.redis_prefix,
        settings.event_retention,
        settings.max_events_per_run,
        heartbeat=min(settings.heartbeat_interval, HEARTBEAT),
    )
