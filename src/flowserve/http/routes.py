"""The route table: every endpoint of the API, each declared once (contract 2).

What a route says here is all there is: the edge matches it, parses these parameters (their
defaults and limits are the only ones), admits the key kind, refuses it while draining if it
starts a run, answers browsers' preflights if it is ``browser``, logs it if ``logged``, and
the OpenAPI document is generated from it. The streaming routes come first: they are the hot
ones, and the table is tried in order.
"""

from __future__ import annotations

from functools import partial

from flowserve.http import flows, history, openai_api, ops, runs, ui
from flowserve.http._openai_shapes import CHAT_BODY
from flowserve.http.body import RUN_BODY
from flowserve.http.routing import Param, Route, RouteTable
from flowserve.ui import ASSETS as UI_ASSETS

MAX_ID = 64
ORG = Param("org", where="path", description="organisation id", min_length=1, max_length=MAX_ID)
FLOW = Param("flow_id", where="path", description="flow id", min_length=1, max_length=MAX_ID)
ORG_Q = Param("org", description="organisation id", min_length=1, max_length=MAX_ID)
FLOW_Q = Param("flow_id", description="flow id", min_length=1, max_length=MAX_ID)
VERSION = Param(
    "version",
    int,
    default=-1,
    description="flow version; -1 (default) is the latest",
    ge=-1,
    le=2**31 - 1,
)
RUN_ID = Param("run_id", description="the run", min_length=1, max_length=MAX_ID)
SSE = ("text/event-stream",)


# A route that starts a run: any key of the org, callable from browsers, logged.
_run = partial(Route, starts_run=True, browser=True, logged=True, body=RUN_BODY)


ROUTES = [
    _run(
        "POST",
        "/stream_exported_flow",
        runs.stream_exported_flow,
        "Stream a flow's outputs as SSE (cumulative outputs per message)",
        tags=("legacy",),
        params=(
            FLOW_Q,
            ORG_Q,
            Param("delta", bool, default=False, description="send only new text per output"),
            VERSION,
        ),
        content=SSE,
    ),
    _run(
        "POST",
        "/inference/v0/stream/{org}/{flow_id}",
        runs.stream_v0,
        "Stream a flow run: envelopes as JSON lines, or SSE with sse=true",
        tags=("v0",),
        params=(
            ORG,
            FLOW,
            Param("delta", bool, default=True, description="each frame carries only new text"),
            Param("sse", bool, default=False, description="SSE instead of JSON lines"),
            VERSION,
            Param("verbose", bool, default=False, description="accepted for compatibility"),
        ),
        content=("application/x-ndjson", *SSE),
    ),
    _run(
        "POST",
        "/run_deployed_flow",
        runs.run_deployed_flow,
        "Run a flow and return its outputs as a flat object",
        tags=("legacy",),
        params=(FLOW_Q, ORG_Q, VERSION),
        errors=(502,),
    ),
    _run(
        "POST",
        "/inference/v0/run/{org}/{flow_id}",
        runs.run_v0,
        "Run a flow and return the run envelope",
        tags=("v0",),
        params=(ORG, FLOW, VERSION),
    ),
    Route(
        "GET",
        "/inference/v0/run/{org}/{flow_id}/metadata",
        runs.run_metadata,
        "The record of one run (private key)",
        tags=("v0",),
        params=(ORG, FLOW, RUN_ID),
        key="private",
        action="read run records",
        browser=True,
        logged=True,
        errors=(404,),
    ),
    Route(
        "POST",
        "/inference/v0/stop/{org}/{flow_id}",
        runs.stop_run,
        "Stop a run in progress (private key, or the public key that started it)",
        tags=("v0",),
        params=(ORG, FLOW, RUN_ID),
        browser=True,
        logged=True,
        errors=(404, 503),  # 503: Redis unreachable, for a run of another process
        description=runs.stop_run.__doc__ or "",
    ),
    Route(
        "POST",
        "/v1/orgs/{org}/flows",
        flows.publish_flow,
        "Publish a flow file (YAML or JSON); a changed flow gets a new version",
        tags=("flows",),
        params=(ORG,),
        key="private",
        action="publish flows",
        browser=True,
        logged=True,
        ok=(201, 200),  # 200: the same file again, nothing new
        body=flows.PUBLISH_BODY,
        errors=(413,),
    ),
    Route(
        "GET",
        "/v1/orgs/{org}/flows",
        flows.list_flows,
        "List the org's flows and their latest versions",
        tags=("flows",),
        params=(
            ORG,
            Param("limit", int, default=100, description="at most this many, by id", ge=1, le=1000),
        ),
        key="private",
        action="list flows",
        browser=True,
        logged=True,
    ),
    Route(
        "GET",
        "/v1/orgs/{org}/runs",
        history.list_runs,
        "List the org's runs, newest first, with filters and cursor paging",
        tags=("runs",),
        params=(ORG, *history.LIST_PARAMS),
        key="private",
        action="read run records",
        browser=True,
        logged=True,
    ),
    Route(
        "GET",
        "/v1/orgs/{org}/runs/{run_id}",
        history.show_run,
        "One run's whole record: inputs, outputs, error, usage, per-node timings",
        tags=("runs",),
        params=(
            ORG,
            Param("run_id", where="path", description="the run", min_length=1, max_length=MAX_ID),
        ),
        key="private",
        action="read run records",
        browser=True,
        logged=True,
        errors=(404,),
    ),
    # A flow's pages (flowserve.http.ui): the same files for every flow, no key; the page
    # then reads the flow's interface with the key its user gives.
    Route(
        "GET",
        "/v1/orgs/{org}/flows/{flow_id}/interface",
        ui.flow_interface,
        "A flow's inputs, outputs, graph and chat pair, for its pages (no prompts)",
        tags=("flows", "ui"),
        params=(ORG, FLOW, VERSION),
        browser=True,
        logged=True,
        errors=(404,),
    ),
    *(
        Route(
            "GET",
            path,
            handler,
            summary,
            tags=("ui",),
            params=(ORG, FLOW),
            key=None,
            ok=(200, 304),
            content=("text/html",),
            errors=(404,),
        )
        for path, handler, summary in (
            ("/ui/{org}/{flow_id}", ui.form_page, "A flow's form page (HTML)"),
            ("/ui/{org}/{flow_id}/chat", ui.chat_page, "A flow's chat page (HTML)"),
        )
    ),
    *(
        Route("GET", f"/ui/assets/{name}", ui.static_asset, name, key=None, documented=False)
        for name in UI_ASSETS
    ),
    # OpenAI-compatible (flowserve.http.openai_api): a model is a flow, "org/flow_id"
    _run(
        "POST",
        "/v1/chat/completions",
        openai_api.chat_completions,
        "Run a flow as an OpenAI chat completion (streamed as chat.completion.chunk with stream)",
        tags=("openai",),
        body=CHAT_BODY,
        content=("application/json", *SSE),
        errors=(400, 502),
        errors_as="openai",
    ),
    Route(
        "GET",
        "/v1/models",
        openai_api.list_models,
        "The flows the key may run, as OpenAI models",
        tags=("openai",),
        browser=True,
        logged=True,
        errors_as="openai",
    ),
    Route("GET", "/healthz", ops.healthz, "Liveness", tags=("ops",), key=None, errors=(503,)),
    Route(
        "GET",
        "/metrics",
        ops.metrics,
        "Prometheus metrics",
        tags=("ops",),
        key=None,
        content=("text/plain",),
    ),
    Route("GET", "/openapi.json", ops.openapi_json, "This document", key=None, documented=False),
    Route("GET", "/docs", ops.docs, "Swagger UI", key=None, documented=False),
    Route("GET", "/redoc", ops.redoc, "ReDoc", key=None, documented=False),
]

TABLE = RouteTable(ROUTES)
