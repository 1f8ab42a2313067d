"""The ASGI application: the services (``flowserve.services``) behind the edge.

A request goes uvicorn → :class:`~flowserve.http.edge.Edge` (one pure-ASGI layer: size
guard, route match, preflight, drain gate, access log, admission) → the handler its route
names (``flowserve.http.routes``). Starlette underneath serves the lifespan and answers paths
no route has (404).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import orjson
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from flowserve import __version__
from flowserve.config import Settings
from flowserve.http.admission import Limits
from flowserve.http.edge import Edge
from flowserve.http.errors import http_error_handler
from flowserve.http.openapi import document
from flowserve.http.ops import metrics_registry
from flowserve.http.routes import ROUTES, TABLE
from flowserve.http.stream import SetupGate
from flowserve.runs.run import SHUTDOWN
from flowserve.services import Services
from flowserve.store import schema

DESCRIPTION = "Run LLM flows and stream their outputs (Stack AI-compatible API)."


@dataclass
class HttpState:
    """What the handlers get beside their request: the services and the edge's own parts."""

    services: Services
    limits: Limits
    setup_gate: SetupGate
    metrics: CollectorRegistry
    _openapi: bytes | None = field(default=None, repr=False)

    def openapi(self) -> bytes:
        if self._openapi is None:
            self._openapi = orjson.dumps(document(ROUTES, "flowserve", __version__, DESCRIPTION))
        return self._openapi


class FlowserveApp(Starlette):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http: HttpState | None = None
        super().__init__(
            lifespan=self._lifespan, exception_handlers={HTTPException: http_error_handler}
        )

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        settings = self.settings
        services = Services.build(settings)
        await schema.prepare(services.db, allow_upgrade=settings.upgrade_schema)
        try:
            # Registered as a live instance: runs left RUNNING by dead ones are failed now
            # and at each heartbeat; ours still RUNNING at the end are CANCELLED.
            async with services.instances.alive(*SHUTDOWN), anyio.create_task_group() as group:
                # The caches of keys and flows refresh ahead of expiry in this group.
                services.key_cache.spawn = services.flows.latest.spawn = group.start_soon
                # What the processes share (Redis: limits, stops, invalidations), its
                # listeners in this group too.
                await services.start_cluster(group.start_soon)
                # Files to index (knowledge bases), and those other processes left pending.
                group.start_soon(services.knowledge.ingest.run)
                self.http = HttpState(
                    services,
                    Limits(settings, services.cluster),
                    SetupGate(settings.max_concurrent_setups),
                    metrics_registry(services),
                )
                self.state.flowserve = services
                self.middleware_stack = None  # built again, now with the state
                if settings.warm_up:
                    await services.warm_up()
                yield
                group.cancel_scope.cancel()
        finally:
            await services.aclose()

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        if self.http is None:  # before start-up: only the lifespan is served
            return inner
        return Edge(self.http, TABLE, inner)


def create_app(settings: Settings | None = None) -> FlowserveApp:
    return FlowserveApp(settings or Settings.load())
