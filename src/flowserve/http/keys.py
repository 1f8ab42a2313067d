"""Handlers for an org's API keys (private key; see ``flowserve.http.routes``)."""

from __future__ import annotations

from starlette.responses import Response

from flowserve.http.access import note
from flowserve.http.routing import Call


async def revoke_key(call: Call) -> Response:
    """Revokes a key of the org, at once on every process (with Redis, each drops it from its
    cache; alone, this process does). Revoking a revoked key again changes nothing. A key of
    another org is the same 404 as an unknown one."""
    args = call.args
    await call.http.services.revoke_key(args["key_id"], args["org"])
    note(call.request.scope, status=200)
    return call.admitted.json({"key_id": args["key_id"], "revoked": True})
