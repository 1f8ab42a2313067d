"""Graceful shutdown: drain the runs in flight, then stop the rest with a last message.

uvicorn alone, on SIGTERM, closes its listening socket, waits for open connections (up to
``timeout_graceful_shutdown``) and then cancels their tasks: a streaming client is cut off
mid-answer without being told why, and the application's lifespan shutdown only runs after
that. :class:`DrainingServer` puts a drain in front of uvicorn's own shutdown:

1. At the signal, new runs are refused: :class:`DrainGate` answers run requests with 503 and
   ``Retry-After`` (the socket still accepts during the drain, so a client or load balancer
   learns why) and ``/healthz`` with 503, so a load balancer takes the instance out.
2. Runs in flight may finish for up to ``drain_seconds``; the drain ends as soon as none is
   left.
3. The runs still going are stopped: each is recorded CANCELLED with its partial outputs, and
   its client receives a last message, ``{"error": "server shutting down", "error_type":
   "shutdown", …}`` on the legacy stream, an envelope with state CANCELLED on v0.
4. uvicorn's shutdown follows: connections close once their last message is written (at most
   ``GRACE`` seconds), then the lifespan ends, which deregisters this instance.

A second Ctrl+C skips what is left of the drain.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Awaitable
from types import FrameType
from typing import Any

import orjson
import uvicorn
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from flowserve.http.errors import error_response
from flowserve.runs.service import SHUTDOWN, RunService

log = logging.getLogger("flowserve.http")

# After the drain, how long connections get to send their last message and close.
GRACE = 5


def _runs(app: Any) -> RunService | None:
    state = getattr(getattr(app, "state", None), "flowserve", None)
    return state.runs if state is not None else None


def _starts_run(scope: Scope) -> bool:
    """POST to a run route (the metadata route, a GET under /run/, is not one)."""
    path: str = scope["path"]
    if scope["method"] != "POST":
        return False
    if path.startswith(("/inference/v0/run/", "/inference/v0/stream/")):
        return True
    return path in ("/stream_exported_flow", "/run_deployed_flow")


class DrainGate:
    """Pure ASGI, checked once per request: while draining, refuse what would start a run and
    report /healthz as unavailable. Everything else (stop requests, run records) still works."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine function: what passes gets the next layer's coroutine itself, so
        # no frame of this layer stays alive for as long as a stream is open.
        if scope["type"] == "http":
            runs = _runs(scope.get("app"))
            if runs is not None and runs.draining:
                if _starts_run(scope):
                    return self._refuse(runs, scope, receive, send)
                if scope["path"] == "/healthz":
                    return self._unhealthy(send)
        return self.app(scope, receive, send)

    @staticmethod
    async def _unhealthy(send: Send) -> None:
        body = orjson.dumps({"status": "draining"})
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _refuse(runs: RunService, scope: Scope, receive: Receive, send: Send) -> None:
        assert runs.drain_deadline is not None
        retry_after = max(1, math.ceil(runs.drain_deadline - time.monotonic()))
        headers = {"Retry-After": str(retry_after), "Connection": "close"}
        response = error_response(Request(scope), 503, SHUTDOWN[0], headers)
        await response(scope, receive, send)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above run between the signal and its own shutdown."""

    def __init__(self, config: uvicorn.Config, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler: only set the flag, so the very next request sees it.
        runs = _runs(self.config.app)
        if runs is not None:
            runs.begin_drain(self.drain_seconds)
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        runs = _runs(self.config.app)
        if runs is not None:
            if runs.active:
                log.info(
                    "shutting down: %d run(s) in flight, draining for up to %gs",
                    len(runs.active),
                    self.drain_seconds,
                )
            stopped = await runs.drain(lambda: self.force_exit)
            if stopped:
                log.warning("drain over: stopped %d run(s)", stopped)
        await super().shutdown(sockets)
