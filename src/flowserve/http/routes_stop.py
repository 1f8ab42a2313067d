"""Stopping a run in progress (contract 2.4)."""

from __future__ import annotations

import logging

import anyio
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from flowserve.errors import NotFoundError
from flowserve.http.access import note
from flowserve.http.admission import admit
from flowserve.http.routes_run import AuthHeader, FlowPath, OrgPath
from flowserve.http.state import AppState

router = APIRouter()
log = logging.getLogger("flowserve.http")

# How long a stop request waits for the run to be recorded CANCELLED, so that a record read
# right after the answer shows it. Cancelling is immediate; recording is one database write.
RECORD_WAIT = 5.0


@router.post(
    "/inference/v0/stop/{org}/{flow_id}",
    tags=["v0"],
    summary="Stop a run in progress (private key, or the public key that started it)",
)
async def stop_run(
    request: Request,
    org: OrgPath,
    flow_id: FlowPath,
    run_id: str = Query(min_length=1, max_length=64, description="the run to stop"),
    authorization: AuthHeader = None,
) -> Response:
    """Cancels the run at once: its upstream streams are closed, it is recorded CANCELLED with
    its partial outputs, and a client streaming it receives a last message saying so. A run
    that is unknown, finished, of another flow or org, or started by another public key is the
    same 404.

    Only runs of this process can be stopped: with several processes (PostgreSQL + Redis) the
    request must reach the one running the run (e.g. Redis pub/sub); not done yet."""
    state: AppState = request.app.state.flowserve
    caller = await admit(request, authorization, org)
    principal = caller.principal
    run = state.runs.running.get(run_id)
    if (
        run is None
        or run.loaded.org_id != org
        or run.flow.id != flow_id
        or not (principal.is_private or principal.key_id == run.key_id)
        or not state.runs.stop(run_id)
    ):
        raise NotFoundError(f"run {run_id!r} not found")
    log.info("run stopped by request (key %s)", principal.key_id, extra={"run_id": run_id})
    with anyio.move_on_after(RECORD_WAIT):
        await run.wait_recorded()
    note(request.scope, status=200, run_id=run_id)
    return caller.json({"run_id": run_id, "stopped": True})
