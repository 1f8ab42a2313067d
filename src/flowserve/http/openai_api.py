"""An OpenAI-compatible face for flows: ``POST /v1/chat/completions`` and ``GET /v1/models``.

A model is a flow: ``org/flow_id``, or ``org/flow_id@version`` for a published version. The
last user message fills the flow's chat input and the chat output is the assistant's reply
(the flow file's ``chat: {input, output}``, else its first input and first output); its
other inputs take their defaults. OpenAI's ``user`` is the run's ``user_id``, so a flow with
memory remembers each user's exchanges. What the body may hold is in
``flowserve.http._openai_shapes``.

A run made here is a run like any other: admitted the same way (key, origin, rate, then the
flow, the body and a run slot last), recorded, stoppable by its id (``x-flowserve-run-id``,
and ``chatcmpl-<run id>`` is the completion's id), cancelled when a streaming client leaves.
Errors are OpenAI's objects (the routes say ``errors_as="openai"``), and a run that fails
mid-stream ends its stream with one, which OpenAI's SDKs raise while iterating.

The key names no org in the URL: a key of any org is admitted, and a flow of another org is
the same 404 as an unknown one.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, cast

from starlette.responses import Response

from flowserve.errors import FlowserveError, InputError, NotFoundError
from flowserve.events import Event, NodeDelta, RunFinished
from flowserve.flows.service import LoadedFlow
from flowserve.http._openai_shapes import (
    ChatRequest,
    completion,
    last_user_text,
    not_found,
    parse_model,
    parse_request,
    usage,
)
from flowserve.http.access import note
from flowserve.http.admission import SlotResponse
from flowserve.http.body import read_capped
from flowserve.http.errors import error_response, openai_error
from flowserve.http.frames import Encoder
from flowserve.http.routing import Call
from flowserve.http.stream import RunStreamResponse
from flowserve.runs.run import SHUTDOWN, Run
from flowserve.store.runs import COMPLETED

RUN_ID_HEADER = "x-flowserve-run-id"
DONE = b"data: [DONE]\n\n"


def finish_reason(run: Run, output: str) -> str:
    """``length`` when the reply's node stopped at its file's ``max_tokens``, else ``stop``."""
    source = run.flow.outputs[output]
    node = run.flow.nodes.get(source)
    limit = node.options.get("max_tokens") if node is not None else None
    used = (run.usage.get(source) or {}).get("completion_tokens")
    return "length" if limit and used is not None and used >= limit else "stop"


class ChunkEncoder(Encoder):
    """A run as ``chat.completion.chunk`` events: the role first, then the reply's text as it
    comes (what piled up while the client was slow in one chunk), then the finish reason,
    the usage if asked (``stream_options.include_usage``: a last chunk with no choices),
    and ``[DONE]``; or, for a run that failed or was stopped, an OpenAI error object."""

    def __init__(self, run: Run, head: dict[str, Any], output: str, include_usage: bool) -> None:
        super().__init__(run, delta=True, sse=False)  # written as SSE here, without ids
        self.head = head
        self.output = output
        self.source = run.flow.outputs[output]
        self.include_usage = include_usage

    def event(self, payload: dict[str, Any]) -> bytes:
        return b"data: " + self.frame(payload) + b"\n"  # frame: one escaped JSON line

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        payload = {**self.head, "choices": [choice]}
        if self.include_usage:
            payload["usage"] = None
        return self.event(payload)

    def first(self) -> bytes:
        # A reply that is an input (a flow that echoes) is known now, and only now.
        return self.chunk({"role": "assistant", "content": self.run.inputs.get(self.source, "")})

    def batch(self, events: list[Event]) -> bytes | None:
        parts: list[str] = []
        final: RunFinished | None = None
        source = self.source
        for event in events:
            kind = type(event)
            if kind is NodeDelta:  # by exact type, not isinstance: once per token
                delta = cast(NodeDelta, event)
                if delta.node_id == source:
                    parts.append(delta.text)
            elif kind is RunFinished:
                final = self.run.final or cast(RunFinished, event)
        out = self.chunk({"content": "".join(parts)}) if parts else b""
        if final is not None:
            self.finished = True
            out += self.end(final)
        return out or None

    def end(self, final: RunFinished) -> bytes:
        if final.state != COMPLETED:
            message = final.error or "run failed"
            return self.event(openai_error(500, message, None, final.error_type))
        out = self.chunk({}, finish_reason(self.run, self.output))
        if self.include_usage:
            out += self.event({**self.head, "choices": [], "usage": usage(self.run.usage)})
        return out + DONE


async def _prepare(call: Call) -> tuple[ChatRequest, LoadedFlow, dict[str, str]]:
    """The body checked (400), the flow found (404), its inputs made from the messages
    (400): all before a run slot is taken."""
    services = call.http.services
    settings = services.settings
    body = parse_request(await read_capped(call.request, settings.max_body_bytes))
    org, flow_id, version = parse_model(body.model)
    if org != call.admitted.principal.org_id:
        raise not_found(body.model)
    try:
        loaded = await services.flows.get(org, flow_id, version)
    except NotFoundError:
        raise not_found(body.model) from None
    flow = loaded.flow
    chat_input, _ = flow.chat_pair
    if chat_input is None:
        raise InputError(f"flow {flow.id!r} has no input for the message", ("body", "model"))
    index, text = last_user_text(body)
    if len(text) > settings.max_input_chars:
        raise InputError(
            f"the last user message is longer than {settings.max_input_chars} characters",
            ("body", "messages", index, "content"),
        )
    missing = [
        name
        for name, spec in flow.spec.inputs.items()
        if name != chat_input and spec.default is None
    ]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        raise InputError(
            f"flow {flow.id!r} needs inputs a chat message cannot fill: {names}"
            " (give them defaults in the flow file)",
            ("body", "model"),
        )
    inputs = flow.resolve_inputs({chat_input: text})
    if flow.prompt_checked:  # e.g. a prompt too long for the embedded model
        await services.runs.runner.check_prompts(flow, inputs)
    return body, loaded, inputs


async def chat_completions(call: Call) -> Response:
    http, caller = call.http, call.admitted
    try:
        body, loaded, inputs = await _prepare(call)
    except FlowserveError:  # refused: it counts against the rate all the same
        await http.limits.count_request(caller.principal)
        raise
    services = http.services
    _, output = loaded.flow.chat_pair
    slot = await http.limits.admit(caller.principal)  # rate and slot, last: a refusal holds none
    created = int(time.time())
    if body.stream:
        try:
            run = services.runs.create(caller.principal, loaded, inputs, body.user)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            encoder = ChunkEncoder(
                run, _head(run, body, created, "chat.completion.chunk"), output, include_usage
            )
            headers = [*caller.headers, *_run_headers(run, bool(caller.headers))]
            stream = RunStreamResponse(
                run,
                encoder,
                sse=True,
                keepalive_interval=services.settings.keepalive_interval,
                coalesce=services.settings.stream_coalesce,
                gate=http.setup_gate,
                extra_headers=headers,
            )
        except BaseException:
            slot.release()
            raise
        return SlotResponse(stream, slot)
    try:
        async with services.runs.start(caller.principal, loaded, inputs, body.user) as run:
            note(call.request.scope, run_id=run.id)
            async for _ in run.events():
                pass
    finally:
        slot.release()
    final = run.final or RunFinished("CANCELLED")
    if final.state != COMPLETED:
        shutdown = final.error_type == SHUTDOWN[1]
        # A flow that failed would fail again: the SDKs retry 5xx unless told not to.
        extra = {"Retry-After": "1"} if shutdown else {"x-should-retry": "false"}
        detail = {"error": final.error, "error_type": final.error_type}
        status = 503 if shutdown else 502
        return error_response(
            call.request, status, detail, {RUN_ID_HEADER: run.id, **extra}, "openai"
        )
    note(call.request.scope, status=200)
    text = run.output_text(output)
    payload = completion(
        _head(run, body, created, "chat.completion"), text, finish_reason(run, output), run.usage
    )
    response = caller.json(payload)
    response.raw_headers.extend(_run_headers(run, bool(caller.headers)))
    return response


async def list_models(call: Call) -> Response:
    """The flows the key may run: its org's, each with the time its latest version was
    published as ``created``."""
    org = call.admitted.principal.org_id
    rows = await call.http.services.flows.store.list(org)
    models = [
        {"id": f"{org}/{flow_id}", "object": "model", "created": _unix(at), "owned_by": org}
        for flow_id, _version, at in rows
    ]
    note(call.request.scope, status=200)
    return call.admitted.json({"object": "list", "data": models})


def _unix(at: datetime) -> int:
    # SQLite gives back naive datetimes; they were written in UTC
    return int((at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp())


def _head(run: Run, body: ChatRequest, created: int, kind: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{run.id}",
        "object": kind,
        "created": created,
        "model": body.model,
        "system_fingerprint": None,
    }


def _run_headers(run: Run, browser: bool) -> list[tuple[bytes, bytes]]:
    headers = [(RUN_ID_HEADER.encode(), run.id.encode())]
    if browser:  # so that browser code may read it (another line of the same header adds)
        headers.append((b"access-control-expose-headers", RUN_ID_HEADER.encode()))
    return headers
