"""Handlers for running flows (contract 2.1), reading a run's record, and stopping a run
(contract 2.4). Their parameters, keys and flags are declared in ``flowserve.http.routes``.

Each run request has its flow and body checked and takes a run slot last, all before the
first byte; the edge has already parsed its parameters and admitted its key.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
from starlette.responses import Response

from flowserve.errors import FlowserveError, NotFoundError
from flowserve.events import RunFinished
from flowserve.flows.service import LoadedFlow
from flowserve.http.access import note
from flowserve.http.admission import Caller, Slot, SlotResponse
from flowserve.http.body import read_run_body
from flowserve.http.frames import EnvelopeEncoder, LegacyEncoder, envelope, metadata
from flowserve.http.history import record
from flowserve.http.resume import resume, resume_point
from flowserve.http.routing import Call
from flowserve.http.stream import RunStreamResponse
from flowserve.runs.run import FINAL, SHUTDOWN, Run
from flowserve.store.runs import CANCELLED

log = logging.getLogger("flowserve.http")

# How long a stop request waits for the run to be recorded CANCELLED, so that a record read
# right after the answer shows it. Cancelling is immediate; recording is one database write.
RECORD_WAIT = 5.0
STOP_POLL = 0.02  # how often the record of a run stopped in another process is read
STOPPED = "run stopped"  # the reason a stopped run is recorded with (Run.stop's default)


async def _prepare(call: Call) -> tuple[Caller, LoadedFlow, dict[str, str], str | None, Slot]:
    services, caller = call.http.services, call.admitted
    args = call.args
    limits = call.http.limits
    try:
        loaded = await services.flows.get(args["org"], args["flow_id"], args["version"])
        settings = services.settings
        given, user_id = await read_run_body(
            call.request, settings.max_body_bytes, settings.max_inputs, settings.max_input_chars
        )
        inputs = loaded.flow.resolve_inputs(given)
        if loaded.flow.prompt_checked:  # e.g. a prompt too long for the embedded model: a 422
            await services.runs.runner.check_prompts(loaded.flow, inputs)
    except FlowserveError:  # refused: it counts against the rate all the same
        await limits.count_request(caller.principal)
        raise
    slot = await limits.admit(caller.principal)  # rate and slot, last: a refusal holds none
    return caller, loaded, inputs, user_id, slot


async def _run_to_end(call: Call) -> tuple[Caller, Run]:
    caller, loaded, inputs, user_id, slot = await _prepare(call)
    try:
        async with call.http.services.runs.start(caller.principal, loaded, inputs, user_id) as run:
            note(call.request.scope, run_id=run.id)
            async for _ in run.events():
                pass
    finally:
        slot.release()
    return caller, run


async def _stream(call: Call, *, legacy: bool, delta: bool, sse: bool) -> Response:
    point = resume_point(call)
    if point is not None:  # a client back after losing its connection: no new run
        await call.http.limits.count_request(call.admitted.principal)
        return await resume(call, point, legacy=legacy, delta=delta, sse=sse)
    caller, loaded, inputs, user_id, slot = await _prepare(call)
    http = call.http
    settings = http.services.settings
    try:
        run = http.services.runs.create(caller.principal, loaded, inputs, user_id, resumable=True)
        encoder = (LegacyEncoder if legacy else EnvelopeEncoder)(run, delta=delta, sse=sse)
        stream = RunStreamResponse(
            run,
            encoder,
            sse=sse,
            keepalive_interval=settings.keepalive_interval,
            coalesce=settings.stream_coalesce,
            gate=http.setup_gate,
            extra_headers=caller.headers,
            grace=settings.resume_grace,
        )
    except BaseException:
        slot.release()
        raise
    return SlotResponse(stream, slot)


async def stream_exported_flow(call: Call) -> Response:
    return await _stream(call, legacy=True, delta=call.args["delta"], sse=True)


async def stream_v0(call: Call) -> Response:
    return await _stream(call, legacy=False, delta=call.args["delta"], sse=call.args["sse"])


async def run_deployed_flow(call: Call) -> Response:
    caller, run = await _run_to_end(call)
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
        note(call.request.scope, status=status)
        response = caller.json({"detail": detail}, status)
        if status == 503:
            response.headers["Retry-After"] = "1"
        return response
    note(call.request.scope, status=200)
    return caller.json(run.outputs())


async def run_v0(call: Call) -> Response:
    caller, run = await _run_to_end(call)
    final = run.final or RunFinished("CANCELLED")
    note(call.request.scope, status=200)
    meta = metadata(run, final)
    return caller.json(
        envelope(run, run.outputs(), final.state, final.error, meta, None, run.citations())
    )


async def run_metadata(call: Call) -> Response:
    args, caller = call.args, call.admitted
    row = await call.http.services.runs.store.get(args["org"], args["run_id"])
    if row.flow_id != args["flow_id"]:
        raise NotFoundError(f"run {args['run_id']!r} not found")
    note(call.request.scope, status=200, run_id=row.id)
    return caller.json(record(row))


async def stop_run(call: Call) -> Response:
    """Cancels the run at once: its upstream streams are closed, it is recorded CANCELLED with
    its partial outputs, and a client streaming it receives a last message saying so. A run
    that is unknown, finished, of another flow or org, or started by another public key is the
    same 404.

    With several processes sharing Redis, any of them may receive the request: the one
    running the run is told, and the answer comes once the run is recorded CANCELLED (503
    while Redis cannot be reached)."""
    args, principal = call.args, call.admitted.principal
    run_id = args["run_id"]
    run = call.http.services.runs.active.get(run_id)
    if run is None:
        return await _stop_elsewhere(call, run_id)
    if not _may_stop(call, run.loaded.org_id, run.flow.id, run.key_id) or not run.stop():
        raise NotFoundError(f"run {run_id!r} not found")
    log.info("run stopped by request (key %s)", principal.key_id, extra={"run_id": run_id})
    with anyio.move_on_after(RECORD_WAIT):
        await run.wait_recorded()
    note(call.request.scope, status=200, run_id=run_id)
    return call.admitted.json({"run_id": run_id, "stopped": True})


def _may_stop(call: Call, org_id: str, flow_id: str, key_id: str | None) -> bool:
    args, principal = call.args, call.admitted.principal
    return (
        org_id == args["org"]
        and flow_id == args["flow_id"]
        and (principal.is_private or principal.key_id == key_id)
    )


async def _stop_elsewhere(call: Call, run_id: str) -> Response:
    """A run another process owns (with Redis): that process stops it; this one answers once
    the run's record says CANCELLED. One that had ended is a 404, as here."""
    services = call.http.services
    cluster = services.cluster
    info = await cluster.lookup(run_id) if cluster.shared else None
    if (
        info is None
        or not _may_stop(call, info.org_id, info.flow_id, info.key_id)
        or await _recorded_state(call, info.org_id, run_id) in FINAL
        or not await cluster.stop(info, STOPPED)
    ):
        raise NotFoundError(f"run {run_id!r} not found")
    log.info(
        "run stopped by request (key %s), in process %s",
        call.admitted.principal.key_id,
        info.owner,
        extra={"run_id": run_id},
    )
    state = None
    with anyio.move_on_after(RECORD_WAIT):
        while state not in FINAL:
            await anyio.sleep(STOP_POLL)
            state = await _recorded_state(call, info.org_id, run_id)
    if state is not None and state != CANCELLED:  # it ended by itself first
        raise NotFoundError(f"run {run_id!r} not found")
    note(call.request.scope, status=200, run_id=run_id)
    return call.admitted.json({"run_id": run_id, "stopped": True})


async def _recorded_state(call: Call, org_id: str, run_id: str) -> str | None:
    """None while the run has no record (a young run is recorded when it ends)."""
    with contextlib.suppress(NotFoundError):
        return (await call.http.services.runs.store.get(org_id, run_id)).state
    return None
