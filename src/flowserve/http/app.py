"""The FastAPI application. No BaseHTTPMiddleware anywhere: it would buffer streams and hide
client disconnects. The middlewares are pure ASGI and act once per request, never per frame:
the request log (outermost), URL and header size limits, CORS preflights, the drain gate, and
the streaming routes' fast dispatch (``flowserve.http.fast_routes``).

They sit outside FastAPI's own layers (its server-error, telemetry and body-limit wrappers),
not inside them as ``add_middleware`` would put them: a stream taken by the fast dispatch
then never passes through those, and the server-error layer's ``send`` wrapper is not paid
on every frame. What those layers do for the other routes is unchanged; an exception that
escapes a fast-dispatched stream reaches uvicorn, which answers 500 the same way."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp

from flowserve import __version__
from flowserve.config import Settings
from flowserve.errors import FlowserveError
from flowserve.http import errors
from flowserve.http.access import AccessLog
from flowserve.http.cors import Preflight
from flowserve.http.fast_routes import FastRunRoutes
from flowserve.http.limits import RequestSizeGuard
from flowserve.http.metrics import registry_for
from flowserve.http.metrics import router as metrics_router
from flowserve.http.openapi import document_errors
from flowserve.http.routes_flows import router as flows_router
from flowserve.http.routes_run import router as run_router
from flowserve.http.routes_stop import router as stop_router
from flowserve.http.shutdown import DrainGate
from flowserve.http.state import AppState
from flowserve.runs.service import SHUTDOWN


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = AppState.build(settings)
        await state.db.create_schema()
        try:
            # Registered as a live instance: runs left RUNNING by dead ones are failed now
            # and at each heartbeat; ours still RUNNING at the end are CANCELLED.
            async with state.instances.alive(*SHUTDOWN), anyio.create_task_group() as background:
                # The caches of keys and flows refresh ahead of expiry in this group.
                state.key_cache.spawn = state.flows.latest.spawn = background.start_soon
                app.state.flowserve = state
                app.state.metrics = registry_for(state.runs)
                if settings.warm_up:
                    await state.warm_up()
                # What start-up made (modules, the app, its models) lives as long as the
                # process; frozen out of the collector's generations, it is not re-scanned by
                # every full collection. A full collection stops the event loop: 50-65 ms
                # each with 100 paced streams open (about 9,000 tokens/s), 5-10 ms once
                # frozen; the per-token delay p99 there went from about 36 to 7 ms.
                gc.collect()
                gc.freeze()
                # A stream's objects are freed by reference counting (no cycles on the stream
                # path; tests/test_no_cycles.py checks), so a full collection finds nothing and
                # only stops the loop, ~10 ms with 100 streams open. Frozen start-up no longer
                # counts as long-lived, so the default (after every 10 middle collections)
                # ran one every few seconds; this makes it ten times rarer.
                gc.set_threshold(700, 10, 100)
                yield
                background.cancel_scope.cancel()
        finally:
            await state.aclose()

    app = _FlowserveAPI(
        settings,
        title="flowserve",
        version=__version__,
        description="Run LLM flows and stream their outputs (Stack AI-compatible API).",
        lifespan=lifespan,
    )
    app.add_exception_handler(FlowserveError, errors.flowserve_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_handler)
    app.include_router(run_router)
    app.include_router(stop_router)
    app.include_router(flows_router)
    app.include_router(metrics_router)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    document_errors(app)
    return app


class _FlowserveAPI(FastAPI):
    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        inner = FastRunRoutes(super().build_middleware_stack())
        guarded = RequestSizeGuard(
            Preflight(DrainGate(inner)),
            max_url_bytes=self.settings.max_url_bytes,
            max_header_bytes=self.settings.max_header_bytes,
        )
        return AccessLog(guarded)
