"""Handlers for publishing and listing flows (private key; see ``flowserve.http.routes``)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from flowserve.errors import InputError
from flowserve.http.access import note
from flowserve.http.body import read_capped
from flowserve.http.routing import Call

PUBLISH_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/yaml": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "object"}},
    },
}


async def publish_flow(call: Call) -> Response:
    services = call.http.services
    body = await read_capped(call.request, services.settings.max_body_bytes, "flow file")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("flow file must be UTF-8 text", ("body",)) from None
    stored, flow = await services.flows.publish(call.args["org"], text)
    payload = {
        "flow_id": stored.flow_id,
        "version": stored.version,
        "created": stored.created,
        "warnings": list(flow.warnings),
    }
    status = 201 if stored.created else 200
    note(call.request.scope, status=status)
    return call.admitted.json(payload, status)


async def list_flows(call: Call) -> Response:
    rows = await call.http.services.flows.store.list(call.args["org"], call.args["limit"])
    payload = [
        {"flow_id": flow_id, "version": version, "published_at": at.isoformat()}
        for flow_id, version, at in rows
    ]
    note(call.request.scope, status=200)
    return call.admitted.json(payload)
