"""A fake Replicate API: predictions plus their SSE stream (``reference/providers-wire.md`` §3.4).

* ``POST /v1/models/{owner}/{name}/predictions`` and ``POST /v1/predictions`` answer 201 with
  the prediction JSON (``id``, ``model``, ``version``, ``status: "starting"``, ``urls`` whose
  ``stream`` is an absolute URL on this fake). The scenario is chosen at creation.
* ``GET /stream/{id}``: ``text/event-stream``; every event has ``event:``, ``id:`` and
  ``data:`` lines and a blank line. A ``logs`` event comes first; tokens are raw text (a
  leading space gives ``data:  world``; a token with newlines spans several ``data:`` lines);
  ``done`` carries ``{}``, or ``{"reason":"canceled"}`` once the prediction was canceled
  (``Scenario(done_reason=…)``: with that reason after the tokens, as when the prediction is
  canceled or fails upstream).
  The in-stream error is ``event: error`` with ``{"detail": …}``, then ``done`` with
  ``{"reason":"error"}``.
* ``POST /v1/predictions/{id}/cancel`` is recorded in :attr:`ReplicateFake.cancels` and
  answers the prediction with ``status: "canceled"``.
* ``GET /v1/predictions/{id}`` answers the prediction, ``succeeded`` with token ``metrics``.
* Errors are RFC 7807 ``application/problem+json``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio

from tests.fakes._server import (
    DROP,
    FakeServer,
    RecordedRequest,
    Scenario,
    compact,
    event_writes,
)

DEFAULT_TOKEN = "r8_test0123456789abcdefABCDEF"
VERSION = "5a6809ca6288247d06daf6365557e5e429063f32a21146b2a807c682652136b8"
STREAM_ERROR = {"detail": "CUDA out of memory. Tried to allocate 2.00 GiB"}

_PROBLEMS: dict[int, tuple[str, str]] = {
    401: ("Unauthenticated", "You did not pass a valid authentication token"),
    404: ("Not found", "The requested resource could not be found"),
    422: ("Unprocessable Entity", "This model does not support streaming"),
    429: ("Too Many Requests", "Request was throttled. Expected available in 7 seconds."),
    500: ("Internal Server Error", "Something went wrong"),
    503: ("Service Unavailable", "The service is temporarily unavailable"),
}


def problem(status: int) -> dict[str, Any]:
    title, detail = _PROBLEMS.get(status, ("Error", f"Error {status}"))
    return {"title": title, "detail": detail, "status": status}


@dataclass
class _Prediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    scenario: Scenario
    status: str = "starting"


class ReplicateFake(FakeServer):
    def __init__(self) -> None:
        self.api_token = DEFAULT_TOKEN
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.predictions: dict[str, _Prediction] = {}
        self.cancels: list[tuple[str, float]] = []  # (prediction id, time.monotonic())

    async def handle(self, request: RecordedRequest, receive: Any, send: Any) -> None:
        if request.headers.get("authorization") != f"Bearer {self.api_token}":
            await self._problem(send, 401)
            return
        parts = request.path.strip("/").split("/")
        method = request.method
        if method == "POST" and (parts[:2] == ["v1", "models"] and parts[-1:] == ["predictions"]):
            await self._create(send, request, model=f"{parts[2]}/{parts[3]}", version=VERSION)
        elif method == "POST" and parts == ["v1", "predictions"]:
            await self._create(send, request, model="owner/pinned", version=request.body["version"])
        elif method == "POST" and parts[:2] == ["v1", "predictions"] and parts[-1] == "cancel":
            self.cancels.append((parts[2], time.monotonic()))
            prediction = self.predictions[parts[2]]
            prediction.status = "canceled"
            await self.send_json(send, 200, self._json(prediction))
        elif method == "GET" and parts[:2] == ["v1", "predictions"] and len(parts) == 3:
            prediction = self.predictions[parts[2]]
            if prediction.status not in ("canceled", "failed"):
                prediction.status = "succeeded"
            await self.send_json(send, 200, self._json(prediction))
        elif method == "GET" and parts[0] == "stream":
            prediction = self.predictions[parts[1]]
            headers = {"content-type": "text/event-stream", "cache-control": "no-store"}
            await self.send_stream(receive, send, self._events(prediction), headers)
        else:
            await self._problem(send, 404)

    async def _problem(self, send: Any, status: int, body: Any = None, headers: Any = None) -> None:
        await self.send_json(
            send, status, body or problem(status), headers, content_type="application/problem+json"
        )

    async def _create(self, send: Any, request: RecordedRequest, model: str, version: str) -> None:
        scenario = self.next_scenario()
        if scenario.status != 200:
            await self._problem(send, scenario.status, scenario.body, scenario.headers)
            return
        if await self.send_instead_of_stream(send, scenario, scenario.headers):
            return
        prediction = _Prediction(
            secrets.token_hex(13), model, version, request.body.get("input", {}), scenario
        )
        self.predictions[prediction.id] = prediction
        await self.send_json(send, 201, self._json(prediction))

    def _json(self, prediction: _Prediction) -> dict[str, Any]:
        api = f"{self.base_url}/v1/predictions/{prediction.id}"
        body: dict[str, Any] = {
            "id": prediction.id,
            "model": prediction.model,
            "version": prediction.version,
            "input": prediction.input,
            "logs": "",
            "output": None,
            "error": None,
            "status": prediction.status,
            "created_at": "2025-06-02T11:19:59.558752983Z",
            "stream": True,
            "urls": {
                "cancel": f"{api}/cancel",
                "get": api,
                "stream": f"{self.base_url}/stream/{prediction.id}",
            },
        }
        if prediction.status == "succeeded":
            sent = prediction.scenario.sent_tokens
            body["output"] = list(sent)
            body["metrics"] = {
                "input_token_count": prediction.scenario.prompt_tokens,
                "output_token_count": len(sent),
                "predict_time": 0.42,
            }
        return body

    async def _events(self, prediction: _Prediction) -> AsyncIterator[bytes]:
        scenario = prediction.scenario
        stamp = int(time.time())
        counter = iter(range(1_000_000))

        def event(kind: str, data: str) -> bytes:
            lines = "".join(f"data: {line}\n" for line in data.split("\n"))
            return f"event: {kind}\nid: {stamp}:{next(counter)}\n{lines}\n".encode()

        prediction.status = "processing"
        yield event("logs", "Loading weights... done")
        for index, token in enumerate(scenario.sent_tokens):
            if index and scenario.gap:
                await anyio.sleep(scenario.gap)
            if prediction.status == "canceled":
                yield event("done", compact({"reason": "canceled"}))
                return
            async for part in event_writes(event("output", token), scenario.split_utf8):
                yield part
        if scenario.error_after is not None:
            prediction.status = "failed"
            yield event("error", compact(scenario.error_body or STREAM_ERROR))
            yield event("done", compact({"reason": "error"}))
            return
        if scenario.truncate_after is not None:
            return
        if scenario.drop_after is not None:
            yield DROP
            return
        if scenario.done_reason is not None:  # canceled (or failed) upstream, not by the client
            prediction.status = "canceled" if scenario.done_reason == "canceled" else "failed"
            yield event("done", compact({"reason": scenario.done_reason}))
            return
        yield event("done", "{}")
