"""Running flows: the legacy routes and ``/inference/v0/*`` (contract 2.1)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from flowserve.auth import Principal
from flowserve.errors import NotFoundError
from flowserve.events import RunFinished
from flowserve.http.body import RUN_BODY_SCHEMA, read_run_body
from flowserve.http.frames import EnvelopeEncoder, LegacyEncoder, envelope, metadata
from flowserve.http.state import AppState
from flowserve.http.stream import RunStreamResponse
from flowserve.runs.service import LoadedFlow, Run
from flowserve.store.runs import timings

router = APIRouter()

AuthHeader = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
Version = Annotated[int, Query(description="flow version; -1 (default) is the latest", ge=-1)]
FLOW_ID = Query(description="flow id", min_length=1, max_length=64)
ORG = Query(description="organisation id", min_length=1, max_length=64)


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


async def _prepare(
    request: Request, authorization: str | None, org: str, flow_id: str, version: int
) -> tuple[AppState, Principal, LoadedFlow, dict[str, str], str | None]:
    state: AppState = request.app.state.flowserve
    principal = await state.authenticate(authorization, org)
    loaded = await state.flows.get(org, flow_id, version)
    given, user_id = await read_run_body(request, state.settings.max_body_bytes)
    inputs = loaded.flow.resolve_inputs(given)
    return state, principal, loaded, inputs, user_id


async def _run_to_end(
    state: AppState,
    principal: Principal,
    loaded: LoadedFlow,
    inputs: dict[str, str],
    user_id: str | None,
) -> Run:
    async with state.runs.execute(principal, loaded, inputs, user_id) as run:
        async for _ in run.events():
            pass
    return run


def _streaming(
    state: AppState,
    principal: Principal,
    loaded: LoadedFlow,
    inputs: dict[str, str],
    user_id: str | None,
    *,
    legacy: bool,
    delta: bool,
    sse: bool,
) -> RunStreamResponse:
    def start():  # type: ignore[no-untyped-def]
        return state.runs.execute(principal, loaded, inputs, user_id)

    encoder_cls = LegacyEncoder if legacy else EnvelopeEncoder
    return RunStreamResponse(
        start,
        lambda run: encoder_cls(run, delta=delta, sse=sse),
        sse=sse,
        keepalive_interval=state.settings.keepalive_interval,
    )


@router.post(
    "/stream_exported_flow",
    tags=["legacy"],
    summary="Stream a flow's outputs as SSE (cumulative outputs per message)",
    openapi_extra=RUN_BODY_SCHEMA,
    response_class=Response,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_exported_flow(
    request: Request,
    authorization: AuthHeader = None,
    flow_id: str = FLOW_ID,
    org: str = ORG,
    delta: bool = Query(False, description="send only new text per output"),
    version: Version = -1,
) -> Response:
    state, principal, loaded, inputs, user_id = await _prepare(
        request, authorization, org, flow_id, version
    )
    return _streaming(  # type: ignore[return-value]
        state, principal, loaded, inputs, user_id, legacy=True, delta=delta, sse=True
    )


@router.post(
    "/run_deployed_flow",
    tags=["legacy"],
    summary="Run a flow and return its outputs as a flat object",
    openapi_extra=RUN_BODY_SCHEMA,
)
async def run_deployed_flow(
    request: Request,
    authorization: AuthHeader = None,
    flow_id: str = FLOW_ID,
    org: str = ORG,
    version: Version = -1,
) -> Response:
    state, principal, loaded, inputs, user_id = await _prepare(
        request, authorization, org, flow_id, version
    )
    run = await _run_to_end(state, principal, loaded, inputs, user_id)
    final = run.final or RunFinished("CANCELLED")
    if final.state != "COMPLETED":
        detail = {
            "error": final.error,
            "error_type": final.error_type,
            "node_id": final.node_id,
            "run_id": run.id,
        }
        return _json({"detail": detail}, 502)
    return _json(run.outputs())


@router.post(
    "/inference/v0/run/{org}/{flow_id}",
    tags=["v0"],
    summary="Run a flow and return the run envelope",
    openapi_extra=RUN_BODY_SCHEMA,
)
async def run_v0(
    request: Request,
    org: str,
    flow_id: str,
    authorization: AuthHeader = None,
    version: Version = -1,
) -> Response:
    state, principal, loaded, inputs, user_id = await _prepare(
        request, authorization, org, flow_id, version
    )
    run = await _run_to_end(state, principal, loaded, inputs, user_id)
    final = run.final or RunFinished("CANCELLED")
    return _json(envelope(run, run.outputs(), final.state, final.error, metadata(run, final), None))


@router.post(
    "/inference/v0/stream/{org}/{flow_id}",
    tags=["v0"],
    summary="Stream a flow run: envelopes as JSON lines, or SSE with sse=true",
    openapi_extra=RUN_BODY_SCHEMA,
    response_class=Response,
    responses={200: {"content": {"application/x-ndjson": {}, "text/event-stream": {}}}},
)
async def stream_v0(
    request: Request,
    org: str,
    flow_id: str,
    authorization: AuthHeader = None,
    delta: bool = Query(True, description="each frame carries only new text"),
    sse: bool = Query(False, description="SSE instead of JSON lines"),
    version: Version = -1,
    verbose: bool = Query(False, description="accepted for compatibility"),
) -> Response:
    state, principal, loaded, inputs, user_id = await _prepare(
        request, authorization, org, flow_id, version
    )
    return _streaming(  # type: ignore[return-value]
        state, principal, loaded, inputs, user_id, legacy=False, delta=delta, sse=sse
    )


@router.get(
    "/inference/v0/run/{org}/{flow_id}/metadata",
    tags=["v0"],
    summary="The record of one run (private key)",
)
async def run_metadata(
    request: Request,
    org: str,
    flow_id: str,
    run_id: str = Query(min_length=1, max_length=64),
    authorization: AuthHeader = None,
) -> Response:
    state: AppState = request.app.state.flowserve
    principal = await state.authenticate(authorization, org)
    state.require_private(principal, "read run records")
    row = await state.runs.runs.get(org, run_id)
    if row.flow_id != flow_id:
        raise NotFoundError(f"run {run_id!r} not found")
    return _json(
        {
            "run_id": row.id,
            "org": row.org_id,
            "flow_id": row.flow_id,
            "flow_version": row.flow_version,
            "state": row.state,
            "inputs": row.inputs,
            "outputs": row.outputs,
            "error": row.error,
            "error_type": row.error_type,
            "error_node": row.error_node,
            "user_id": row.user_id,
            "usage": row.usage,
            "timings": timings(row),
            "created_at": row.queued_at.isoformat(),
        }
    )
