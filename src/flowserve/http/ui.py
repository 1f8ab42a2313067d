"""Handlers for a flow's pages (``/ui/{org}/{flow_id}``, ``…/chat``), their scripts and
style (``/ui/assets/…``), and the flow's interface, which is all a page learns of a flow.

The pages and assets need no key: they are the same files for every flow and hold nothing of
it. The page then asks the API, with the key its user gives, for the interface: names,
descriptions and defaults, the graph's shape and the chat pair; never a prompt, system text,
model, provider, endpoint or variable name (a public key must not learn the publisher's
prompts).

The page is sent with a strict Content-Security-Policy: only this server's own scripts and
styles, no inline code, no plugins, no framing. That is the second line of defence; the first
is that the page's scripts put the API's and the models' text into it as text only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from starlette.responses import Response

from flowserve.errors import NotFoundError
from flowserve.flows.graph import Node
from flowserve.flows.service import LoadedFlow
from flowserve.http.access import note
from flowserve.http.routing import Call
from flowserve.ui import PAGE, asset

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
_FLOW_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")  # flowserve.flows.spec.Identifier
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"}


def _send(call: Call, name: str, headers: dict[str, str] | None = None) -> Response:
    """A shipped file, revalidated on each use (304 when unchanged): a page and its modules
    change together when flowserve is upgraded, and the modules import each other by name."""
    file = asset(name)
    sent = {"Cache-Control": "no-cache", "ETag": file.etag, "X-Content-Type-Options": "nosniff"}
    sent.update(headers or {})
    if call.request.headers.get("if-none-match") == file.etag:
        return Response(status_code=304, headers=sent)
    return Response(file.body, media_type=file.media_type, headers=sent)


def _page(call: Call) -> Response:
    # A page exists for each name a flow can have (so /ui/assets/typo.js is no page); whether
    # the flow exists, the page asks with its key.
    if _FLOW_ID.fullmatch(call.args["flow_id"]) is None:
        raise NotFoundError("no such page: not a flow id")
    return _send(call, PAGE, PAGE_HEADERS)


async def form_page(call: Call) -> Response:
    return _page(call)


async def chat_page(call: Call) -> Response:
    return _page(call)


async def static_asset(call: Call) -> Response:
    return _send(call, call.request.url.path.rpartition("/")[2])


def describe(loaded: LoadedFlow) -> dict[str, Any]:
    """What a page needs to know of a flow: its fields, its graph's shape, its chat pair."""
    flow = loaded.flow
    spec = flow.spec
    chat_input, chat_output = flow.chat_pair
    return {
        "flow_id": flow.id,
        "name": spec.name,
        "description": spec.description,
        "version": loaded.version,
        "inputs": [
            {"id": input_id, "description": s.description, "default": s.default}
            for input_id, s in spec.inputs.items()
        ],
        "outputs": [{"id": out_id, "source": source} for out_id, source in flow.outputs.items()],
        "nodes": [_node(node, spec.inputs) for node in flow.nodes.values()],
        "chat": {"input": chat_input, "output": chat_output},
    }


def _node(node: Node, inputs: Iterable[str]) -> dict[str, Any]:
    """A node's id, type and edges: the nodes it reads (``deps``) and the inputs it reads."""
    read = {name for template in node.templates.values() for name in template.names}
    return {
        "id": node.id,
        "type": node.spec.type,
        "deps": list(node.deps),
        "inputs": [input_id for input_id in inputs if input_id in read],
    }


async def flow_interface(call: Call) -> Response:
    args = call.args
    loaded = await call.http.services.flows.get(args["org"], args["flow_id"], args["version"])
    note(call.request.scope, status=200)
    return call.admitted.json(describe(loaded))
