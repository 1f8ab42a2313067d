"""Publishing and listing flows over HTTP (private key)."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Request
from starlette.responses import Response

from flowserve.errors import InputError, PayloadTooLargeError
from flowserve.http.state import AppState

router = APIRouter(tags=["flows"])
AuthHeader = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]

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
async def publish_flow(request: Request, org: str, authorization: AuthHeader = None) -> Response:
    state: AppState = request.app.state.flowserve
    principal = await state.authenticate(authorization, org)
    state.require_private(principal, "publish flows")
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
    return Response(
        orjson.dumps(payload), 201 if stored.created else 200, media_type="application/json"
    )


@router.get("/v1/orgs/{org}/flows", summary="List the org's flows and their latest versions")
async def list_flows(request: Request, org: str, authorization: AuthHeader = None) -> Response:
    state: AppState = request.app.state.flowserve
    principal = await state.authenticate(authorization, org)
    state.require_private(principal, "list flows")
    rows = await state.flows.store.list(org)
    payload = [
        {"flow_id": flow_id, "version": version, "published_at": at.isoformat()}
        for flow_id, version, at in rows
    ]
    return Response(orjson.dumps(payload), media_type="application/json")
