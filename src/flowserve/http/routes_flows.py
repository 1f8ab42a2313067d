"""Publishing and listing flows over HTTP (private key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Request
from starlette.responses import Response

from flowserve.errors import InputError, PayloadTooLargeError
from flowserve.http.access import note
from flowserve.http.admission import admit
from flowserve.http.state import AppState

router = APIRouter(tags=["flows"])
AuthHeader = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
OrgPath = Annotated[str, Path(description="organisation id", min_length=1, max_length=64)]

PUBLISH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


@router.post(
    "/v1/orgs/{org}/flows",
    summary="Publish a flow file (YAML or JSON); a changed flow gets a new version",
    openapi_extra=PUBLISH_BODY,
    status_code=201,
)
async def publish_flow(
    request: Request, org: OrgPath, authorization: AuthHeader = None
) -> Response:
    state: AppState = request.app.state.flowserve
    caller = await admit(request, authorization, org)
    state.require_private(caller.principal, "publish flows")
    body = await request.body()
    if len(body) > state.settings.max_body_bytes:
        raise PayloadTooLargeError(f"flow file larger than {state.settings.max_body_bytes} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("flow file must be UTF-8 text", ("body",)) from None
    stored, flow = await state.flows.publish(org, text)
    payload = {
        "flow_id": stored.flow_id,
        "version": stored.version,
        "created": stored.created,
        "warnings": list(flow.warnings),
    }
    status = 201 if stored.created else 200
    note(request.scope, status=status)
    return caller.json(payload, status)


@router.get("/v1/orgs/{org}/flows", summary="List the org's flows and their latest versions")
async def list_flows(request: Request, org: OrgPath, authorization: AuthHeader = None) -> Response:
    state: AppState = request.app.state.flowserve
    caller = await admit(request, authorization, org)
    state.require_private(caller.principal, "list flows")
    rows = await state.flows.store.list(org)
    payload = [
        {"flow_id": flow_id, "version": version, "published_at": at.isoformat()}
        for flow_id, version, at in rows
    ]
    note(request.scope, status=200)
    return caller.json(payload)
