"""Admission: what a request must pass before anything runs, each check once per request.

In order: the API key, of the org in the URL (401, the same answer whether the org, the key
or neither exists); the browser origin against the key's ``allowed_origins`` (403,
``flowserve.http.cors``); the key's request rate (429, ``flowserve.http.limits``). A run
request then has its flow (404) and body (413/422) checked by its route, and last takes a run
slot (429 per key / 503 server), so that a refused request never holds one. The slot is
released when the run's response ends, however it ends (completion, failure, stop, client
gone): :class:`SlotResponse` for streams, ``try``/``finally`` for blocking runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flowserve.auth import Principal
from flowserve.http import cors
from flowserve.http.access import note
from flowserve.http.limits import Slot
from flowserve.http.state import AppState


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    headers: list[tuple[bytes, bytes]]  # CORS headers for the response (empty: no Origin)

    def json(self, payload: Any, status: int = 200) -> Response:
        response = Response(orjson.dumps(payload), status, media_type="application/json")
        response.raw_headers.extend(self.headers)
        return response


async def admit(request: Request, authorization: str | None, org: str) -> Caller:
    state: AppState = request.app.state.flowserve
    principal = await state.authenticate(authorization, org)
    note(request.scope, key_id=principal.key_id)
    headers = cors.check_origin(principal, request.headers.get("origin"))
    state.limits.check_rate(principal)
    return Caller(principal, headers)


class SlotResponse(Response):
    """Sends ``inner`` (a run stream) and releases the run slot when it has ended."""

    def __init__(self, inner: Response, slot: Slot) -> None:
        self.inner = inner
        self.slot = slot
        self.status_code = inner.status_code
        self.background = None
        self.raw_headers = inner.raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self.slot.release()
            run = getattr(self.inner, "run", None)
            note(scope, status=self.inner.status_code, run_id=run.id if run else None)
