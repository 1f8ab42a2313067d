"""The route table: every endpoint of the API, each declared once (contract 2).

What a route says here is all there is: the edge matches it, parses these parameters (their
defaults and limits are the only ones), admits the key kind, refuses it while draining if it
starts a run, answers browsers' preflights if it is ``browser``, logs it if ``logged``, and
the OpenAPI document is generated from it. The streaming routes come first: they are the hot
ones, and the table is tried in order.
"""

from __future__ import annotations

from functools import partial

from flowserve.http import documents, flows, history, keys, knowledge, openai_api, ops, runs, ui
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
# Knowledge bases and per-user documents: a private key, logged.
_kb = partial(
    Route, tags=("knowledge-bases",), key="private", action="use knowledge bases",
    browser=True, logged=True,
)  # fmt: skip
_docs = partial(
    Route, tags=("documents",), key="private", action="use per-user documents",
    browser=True, logged=True,
)  # fmt: skip
KB_ID, RESOURCE_ID = knowledge.KB_ID, knowledge.RESOURCE_ID
KB_PATH = "/v1/knowledge-bases/{knowledge_base_id}"
RESOURCE_PATH = f"{KB_PATH}/resources/{{resource_id}}"
DOCS_PATH = "/documents/{org}/{flow_id}/{node_id}/{user_id}"
DOCS_PARAMS = (ORG, FLOW, documents.NODE, documents.USER)


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
        "DELETE",
        "/v1/orgs/{org}/keys/{key_id}",
        keys.revoke_key,
        "Revoke an API key of the org, at once on every process",
        tags=("keys",),
        params=(
            ORG,
            Param(
                "key_id",
                where="path",
                description="the key's id: the part after fs-pub- or fs-priv-",
                min_length=1,
                max_length=MAX_ID,
            ),
        ),
        key="private",
        action="revoke API keys",
        browser=True,
        logged=True,
        errors=(404,),
        description=keys.revoke_key.__doc__ or "",
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
    # Knowledge bases (flowserve.http.knowledge) on Stack AI's v1 paths: a private key, its
    # org's KBs only (another org's: 404, as an unknown one)
    _kb(
        "GET",
        "/v1/knowledge-bases",
        knowledge.list_knowledge_bases,
        "List the org's knowledge bases, newest first (header x-next-cursor: the next page)",
        params=(knowledge.CURSOR, knowledge.page_size(1000), knowledge.DIRECTION),
    ),
    _kb(
        "POST",
        "/v1/knowledge-bases",
        knowledge.create_knowledge_base,
        "Create a knowledge base",
        ok=(201,),
        body=knowledge.CREATE_BODY,
        errors=(413,),
    ),
    _kb(
        "GET",
        KB_PATH,
        knowledge.get_knowledge_base,
        "A knowledge base",
        params=(KB_ID,),
        errors=(404,),
    ),
    _kb(
        "PATCH",
        KB_PATH,
        knowledge.update_knowledge_base,
        "Update a knowledge base (new indexing parameters re-index its files)",
        params=(KB_ID,),
        body=knowledge.UPDATE_BODY,
        errors=(404, 413),
    ),
    _kb(
        "DELETE",
        KB_PATH,
        knowledge.delete_knowledge_base,
        "Delete a knowledge base with its files",
        params=(KB_ID,),
        ok=(204,),
        content=(),
        errors=(404,),
    ),
    _kb(
        "POST",
        f"{KB_PATH}/sync",
        knowledge.sync_knowledge_base,
        "Index again every file that is not indexed",
        params=(KB_ID,),
        ok=(202,),
        errors=(404,),
    ),
    _kb(
        "GET",
        f"{KB_PATH}/resources",
        knowledge.list_resources,
        "The knowledge base's files with their status, newest first",
        params=(KB_ID, knowledge.CURSOR, knowledge.page_size(100), knowledge.DIRECTION),
        errors=(404,),
    ),
    _kb(
        "POST",
        f"{KB_PATH}/resources",
        knowledge.upload_resource,
        "Upload a file (multipart part 'file'); it is indexed in the background",
        params=(KB_ID,),
        ok=(202,),
        body=knowledge.UPLOAD_BODY,
        errors=(404, 413, 415),
    ),
    _kb(
        "GET",
        RESOURCE_PATH,
        knowledge.get_resource,
        "A file and its indexing status",
        params=(KB_ID, RESOURCE_ID),
        errors=(404,),
    ),
    _kb(
        "DELETE",
        RESOURCE_PATH,
        knowledge.delete_resource,
        "Delete a file: it leaves search at once",
        params=(KB_ID, RESOURCE_ID),
        ok=(204,),
        content=(),
        errors=(404,),
    ),
    _kb(
        "GET",
        f"{RESOURCE_PATH}/file",
        knowledge.download_resource,
        "Download a file's original",
        params=(KB_ID, RESOURCE_ID),
        content=knowledge.DOWNLOADS,
        errors=(404,),
    ),
    _kb(
        "POST",
        f"{KB_PATH}/search",
        knowledge.search_knowledge_base,
        "Search a knowledge base (keyword: the database's full-text index)",
        params=(KB_ID,),
        body=knowledge.SEARCH_BODY,
        errors=(404, 413),
    ),
    # Per-user documents (flowserve.http.documents): a private key of the path's org
    _docs(
        "GET",
        DOCS_PATH,
        documents.list_documents,
        "A user's file names, oldest first",
        params=DOCS_PARAMS,
        errors=(404,),
    ),
    _docs(
        "POST",
        DOCS_PATH,
        documents.upload_document,
        "Upload a user's file (multipart part 'file'): indexed before the answer",
        params=DOCS_PARAMS,
        body=knowledge.UPLOAD_BODY,
        errors=(404, 413, 415),
    ),
    _docs(
        "DELETE",
        DOCS_PATH,
        documents.delete_document,
        "Delete a user's file",
        params=(*DOCS_PARAMS, documents.FILENAME),
        errors=(404,),
    ),
    _docs(
        "GET",
        f"{DOCS_PATH}/file",
        documents.download_document,
        "Download a user's file",
        params=(*DOCS_PARAMS, documents.FILENAME),
        content=knowledge.DOWNLOADS,
        errors=(404,),
    ),
    *(
        _docs(
            method,
            "/documents/{org}/{flow_id}/{node_id}/",
            documents.refuse_empty_user,
            "(no user_id: 422)",
            params=DOCS_PARAMS[:3],
            documented=False,
        )
        for method in ("GET", "POST", "DELETE")
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
