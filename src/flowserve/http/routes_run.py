"""Running flows: the legacy routes and ``/inference/v0/*`` (contract 2.1).

Each run request is admitted (key, origin, rate: ``flowserve.http.admission``), has its flow
and body checked, and takes a run slot last, all before the first byte.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from starlette.responses import Response

from flowserve.errors import NotFoundError
from flowserve.events import RunFinished
from flowserve.http.access import note
from flowserve.http.admission import Caller, SlotResponse, admit
from flowserve.http.body import RUN_BODY_SCHEMA, read_run_body
from flowserve.http.frames import EnvelopeEncoder, LegacyEncoder, envelope, metadata
from flowserve.http.limits import Slot
from flowserve.http.state import AppState
from flowserve.http.stream import RunStreamResponse
from flowserve.runs.service import SHUTDOWN, LoadedFlow, Run
from flowserve.store.runs import timings

router = APIRouter()

AuthHeader = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
Version = Annotated[
    int, Query(description="flow version; -1 (default) is the latest", ge=-1, le=2**31 - 1)
]
FLOW_ID = Query(description="flow id", min_length=1, max_length=64)
ORG = Query(description="organisation id", min_length=1, max_length=64)
OrgPath = Annotated[str, Path(description="organisation id", min_length=1, max_length=64)]
FlowPath = Annotated[str, Path(description="flow id", min_length=1, max_length=64)]


async def _prepare(
    request: Request, authorization: str | None, org: str, flow_id: str, version: int
) -> tuple[AppState, Caller, LoadedFlow, dict[str, str], str | None, Slot]:
    state: AppState = request.app.state.flowserve
    caller = await admit(request, authorization, org)
    loaded = await state.flows.get(org, flow_id, version)
    settings = state.settings
    given, user_id = await read_run_body(
        request, settings.max_body_bytes, settings.max_inputs, settings.max_input_chars
    )
    inputs = loaded.flow.resolve_inputs(given)
    if loaded.flow.prompt_checked:  # e.g. a prompt too long for the embedded model: a 422
        await state.runs.runner.check_prompts(loaded.flow, inputs)
    slot = state.limits.acquire(caller.principal)  # last: a refused request holds no slot
    return state, caller, loaded, inputs, user_id, slot


async def _run_to_end(
    request: Request,
    state: AppState,
    caller: Caller,
    loaded: LoadedFlow,
    inputs: dict[str, str],
    user_id: str | None,
    slot: Slot,
) -> Run:
    try:
        async with state.runs.execute(caller.principal, loaded, inputs, user_id) as run:
            note(request.scope, run_id=run.id)
            async for _ in run.events():
                pass
    finally:
        slot.release()
    return run


def _streaming(
    state: AppState,
    caller: Caller,
    loaded: LoadedFlow,
    inputs: dict[str, str],
    user_id: str | None,
    slot: Slot,
    *,
    legacy: bool,
    delta: bool,
    sse: bool,
) -> Response:
    def start():
        return state.runs.execute(caller.principal, loaded, inputs, user_id)

    encoder_cls = LegacyEncoder if legacy else EnvelopeEncoder
    try:
        stream = RunStreamResponse(
            start,
            lambda run: encoder_cls(run, delta=delta, sse=sse),
            sse=sse,
            keepalive_interval=state.settings.keepalive_interval,
            coalesce=state.settings.stream_coalesce,
            gate=state.setup_gate,
            extra_headers=caller.headers,
        )
    except BaseException:
        slot.release()
        raise
    return SlotResponse(stream, slot)


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
    state, caller, loaded, inputs, user_id, slot = await _prepare(
        request, authorization, org, flow_id, version
    )
    return _streaming(
        state, caller, loaded, inputs, user_id, slot, legacy=True, delta=delta, sse=True
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
    state, caller, loaded, inputs, user_id, slot = await _prepare(
        request, authorization, org, flow_id, version
    )
    run = await _run_to_end(request, state, caller, loaded, inputs, user_id, slot)
    final = run.final or RunFinished("CANCELLED")
    if final.state != "COMPLETED":
        detail = {
            "error": final.error,
            "error_type": final.error_type,
            "node_id": final.node_id,
            "run_id": run.id,
        }
        # Stopped by a shutdown, the flow did not fail: the server went away, so try again.
        status = 503 if final.error_type == SHUTDOWN[1] else 502
        note(request.scope, status=status)
        response = caller.json({"detail": detail}, status)
        if status == 503:
            response.headers["Retry-After"] = "1"
        return response
    note(request.scope, status=200)
    return caller.json(run.outputs())


@router.post(
    "/inference/v0/run/{org}/{flow_id}",
    tags=["v0"],
    summary="Run a flow and return the run envelope",
    openapi_extra=RUN_BODY_SCHEMA,
)
async def run_v0(
    request: Request,
    org: OrgPath,
    flow_id: FlowPath,
    authorization: AuthHeader = None,
    version: Version = -1,
) -> Response:
    state, caller, loaded, inputs, user_id, slot = await _prepare(
        request, authorization, org, flow_id, version
    )
    run = await _run_to_end(request, state, caller, loaded, inputs, user_id, slot)
    final = run.final or RunFinished("CANCELLED")
    note(request.scope, status=200)
    return caller.json(
        envelope(run, run.outputs(), final.state, final.error, metadata(run, final), None)
    )


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
    org: OrgPath,
    flow_id: FlowPath,
    authorization: AuthHeader = None,
    delta: bool = Query(True, description="each frame carries only new text"),
    sse: bool = Query(False, description="SSE instead of JSON lines"),
    version: Version = -1,
    verbose: bool = Query(False, description="accepted for compatibility"),
) -> Response:
    state, caller, loaded, inputs, user_id, slot = await _prepare(
        request, authorization, org, flow_id, version
    )
    return _streaming(
        state, caller, loaded, inputs, user_id, slot, legacy=False, delta=delta, sse=sse
    )


@router.get(
    "/inference/v0/run/{org}/{flow_id}/metadata",
    tags=["v0"],
    summary="The record of one run (private key)",
)
async def run_metadata(
    request: Request,
    org: OrgPath,
    flow_id: FlowPath,
    run_id: str = Query(min_length=1, max_length=64),
    authorization: AuthHeader = None,
) -> Response:
    state: AppState = request.app.state.flowserve
    caller = await admit(request, authorization, org)
    state.require_private(caller.principal, "read run records")
    row = await state.runs.runs.get(org, run_id)
    if row.flow_id != flow_id:
        raise NotFoundError(f"run {run_id!r} not found")
    note(request.scope, status=200, run_id=row.id)
    return caller.json(
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
