"""Publishing flows and loading them to run: validated on publish, compiled once per version.

The latest version of each flow is cached (``cache_ttl``); a publish drops it from the cache
of this process and, through the cluster, of every other one, so the new version runs
everywhere at once.

Publishing checks a flow in two steps: parsed and compiled on a worker thread (every sync
check), then each node type's async checks (:func:`~flowserve.flows.graph.check_flow`, given
the publishing org and ``node_services``) before anything is stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from flowserve.cache import RefreshingCache
from flowserve.cluster.base import Cluster, Invalidation
from flowserve.flows.graph import Flow, check_flow, compile_flow
from flowserve.flows.loader import check_counts, parse_flow_data, spec_from_data
from flowserve.nodes.registry import NodeRegistry, installed
from flowserve.providers.registry import ProviderRegistry
from flowserve.store.flows import FlowStore, StoredFlow


@dataclass(frozen=True, slots=True)
class LoadedFlow:
    org_id: str
    version: int
    flow: Flow


class FlowService:
    def __init__(
        self,
        store: FlowStore,
        registry: ProviderRegistry,
        cache_ttl: float,
        max_nodes: int = 500,
        max_outputs: int = 100,
        cluster: Cluster | None = None,
        nodes: NodeRegistry | None = None,
        node_services: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.nodes = nodes or installed()  # the node types flow files may use
        self.node_services: Mapping[str, Any] = {} if node_services is None else node_services
        self.cluster = cluster
        self.max_nodes, self.max_outputs = max_nodes, max_outputs
        self._compiled: dict[tuple[str, str, int], LoadedFlow] = {}
        # (org, flow id) -> its latest stored version; another process's publish drops it
        # (an invalidation through the cluster), else it is seen after the ttl.
        self.latest: RefreshingCache[tuple[str, str], StoredFlow] = RefreshingCache(cache_ttl)

    def compile_text(self, text: str) -> tuple[dict[str, Any], Flow]:
        data = parse_flow_data(text)
        check_counts(data, self.max_nodes, self.max_outputs)
        flow = compile_flow(spec_from_data(data, self.nodes), self.registry, self.nodes)
        return flow.spec.model_dump(mode="json"), flow

    async def publish(self, org_id: str, text: str) -> tuple[StoredFlow, Flow]:
        # Off the event loop: parsing and compiling a large file takes long enough to stall
        # every open stream (a 0.87 MB flow held /healthz for 5.8-8.0 s).
        spec, flow = await anyio.to_thread.run_sync(self.compile_text, text)
        await check_flow(flow, org_id, self.node_services)
        stored = await self.store.publish(org_id, spec, text)
        self.latest.invalidate((org_id, flow.id))
        if self.cluster is not None and stored.created:
            await self.cluster.invalidate(Invalidation(org_id=org_id, flow_id=flow.id))
        return stored, flow

    async def get(self, org_id: str, flow_id: str, version: int | None = None) -> LoadedFlow:
        if version is not None and version >= 0:
            loaded = self._compiled.get((org_id, flow_id, version))
            if loaded is not None:
                return loaded
            stored = await self.store.get(org_id, flow_id, version)
        else:
            stored = await self.latest.get(
                (org_id, flow_id), lambda: self.store.get(org_id, flow_id, None)
            )
        key = (org_id, flow_id, stored.version)
        loaded = self._compiled.get(key)
        if loaded is None:
            spec = spec_from_data(stored.spec, self.nodes)
            flow = compile_flow(spec, self.registry, self.nodes)
            loaded = self._compiled[key] = LoadedFlow(org_id, stored.version, flow)
        return loaded
