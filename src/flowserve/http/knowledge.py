"""Knowledge-base routes, on Stack AI's v1 paths (``/v1/knowledge-bases…``, contract 3.2).

Each needs a private key; the org is the key's, so another org's KB is the same 404 as an
unknown one. Handlers parse and answer; :class:`flowserve.knowledge.service.KnowledgeService`
does the rest. An upload is streamed to disk (``flowserve.knowledge.upload``), checked,
stored by content hash, answered 202 and indexed in the background.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response

from flowserve.errors import InputError, NotFoundError, ParameterError
from flowserve.http.admission import Caller
from flowserve.http.body import read_capped
from flowserve.http.routing import Call, Param
from flowserve.knowledge.formats import MIME
from flowserve.knowledge.params import (
    CreateKnowledgeBase,
    SearchRequest,
    UpdateKnowledgeBase,
    openapi_schema,
    parse_body,
)
from flowserve.knowledge.service import KnowledgeService, file_json
from flowserve.knowledge.store import decode_cursor
from flowserve.knowledge.upload import Received, receive

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
KB_ID = Param(
    "knowledge_base_id", where="path", description="the knowledge base (a UUID)",
    min_length=36, max_length=36,
)  # fmt: skip
RESOURCE_ID = Param(
    "resource_id", where="path", description="the file (a UUID)", min_length=36, max_length=36
)
CURSOR = Param("cursor", default="", description="from x-next-cursor / next_cursor", max_length=200)
DIRECTION = Param("direction", default="next", description="next: older; prev: newer")
DOWNLOADS = tuple(sorted(set(MIME.values())))


def page_size(most: int) -> Param:
    return Param("page_size", int, default=50, description="items per page", ge=1, le=most)


def _json_body(model: type[Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": openapi_schema(model)}}}


CREATE_BODY = _json_body(CreateKnowledgeBase)
UPDATE_BODY = _json_body(UpdateKnowledgeBase)
SEARCH_BODY = _json_body(SearchRequest)
UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        }
    },
}


def uuid_arg(call: Call, name: str) -> str:
    value = call.args[name]
    if not _UUID.fullmatch(value):
        raise ParameterError([(("path", name), "Input should be a valid UUID", "uuid_parsing")])
    return str(value).lower()


def paging(call: Call) -> tuple[tuple[Any, str] | None, bool]:
    """(cursor, forward) from the query, or one 422 naming what is wrong."""
    problems: list[tuple[tuple[str, ...], str, str]] = []
    direction = call.args["direction"]
    if direction not in ("next", "prev"):
        problems.append((("query", "direction"), "Input should be 'next' or 'prev'", "enum"))
    cursor = None
    if call.args["cursor"]:
        try:
            cursor = decode_cursor(call.args["cursor"])
        except ValueError as exc:
            problems.append((("query", "cursor"), str(exc), "value_error"))
    if problems:
        raise ParameterError(problems)
    return cursor, direction == "next"


async def chunks(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client gone midway is a clean 422."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise InputError("client disconnected before sending the whole body") from None


async def upload(call: Call, limit: int) -> Received:
    request = call.request
    knowledge = _knowledge(call)
    return await receive(
        chunks(request),
        request.headers.get("content-type"),
        request.headers.get("content-length"),
        limit,
        knowledge.blobs,
    )


def empty(caller: Caller, status: int = 204) -> Response:
    response = Response(status_code=status)
    response.raw_headers.extend(caller.headers)
    return response


def download(caller: Caller, path: Path, mime: str, name: str) -> Response:
    if not path.is_file():
        raise NotFoundError("the file's original is missing from the server's storage")
    response = FileResponse(path, media_type=mime, filename=name)
    response.raw_headers.extend(caller.headers)
    return response


def _knowledge(call: Call) -> KnowledgeService:
    return call.http.services.knowledge


async def _body(call: Call) -> bytes:
    return await read_capped(call.request, call.http.services.settings.max_body_bytes)


async def list_knowledge_bases(call: Call) -> Response:
    cursor, forward = paging(call)
    org = call.admitted.principal.org_id
    found, following = await _knowledge(call).list_kbs(org, cursor, forward, call.args["page_size"])
    response = call.admitted.json(found)
    if following is not None:
        response.headers["x-next-cursor"] = following
    return response


async def create_knowledge_base(call: Call) -> Response:
    body = parse_body(CreateKnowledgeBase, await _body(call))
    made = await _knowledge(call).create(call.admitted.principal.org_id, body)
    return call.admitted.json(made, 201)


async def get_knowledge_base(call: Call) -> Response:
    kb_id = uuid_arg(call, "knowledge_base_id")
    return call.admitted.json(await _knowledge(call).get(call.admitted.principal.org_id, kb_id))


async def update_knowledge_base(call: Call) -> Response:
    kb_id = uuid_arg(call, "knowledge_base_id")
    body = parse_body(UpdateKnowledgeBase, await _body(call))
    org = call.admitted.principal.org_id
    return call.admitted.json(await _knowledge(call).update(org, kb_id, body))


async def delete_knowledge_base(call: Call) -> Response:
    kb_id = uuid_arg(call, "knowledge_base_id")
    await _knowledge(call).delete(call.admitted.principal.org_id, kb_id)
    return empty(call.admitted)


async def sync_knowledge_base(call: Call) -> Response:
    kb_id = uuid_arg(call, "knowledge_base_id")
    await _knowledge(call).sync(call.admitted.principal.org_id, kb_id)
    message = "Sync started: files not indexed are indexed again"
    return call.admitted.json({"message": message, "status": "accepted"}, 202)


async def list_resources(call: Call) -> Response:
    kb_id = uuid_arg(call, "knowledge_base_id")
    cursor, forward = paging(call)
    org = call.admitted.principal.org_id
    found, following = await _knowledge(call).files(
        org, kb_id, cursor, forward, call.args["page_size"]
    )
    current = call.args["cursor"] or None
    return call.admitted.json({"data": found, "next_cursor": following, "current_cursor": current})


async def upload_resource(call: Call) -> Response:
    kb_id = uuid_arg(call, "knowledge_base_id")
    knowledge = _knowledge(call)
    org = call.admitted.principal.org_id
    await knowledge.get(org, kb_id)  # 404 before the body is read
    received = await upload(call, call.http.services.settings.kb_max_file_bytes)
    resource_id, changed = await knowledge.upload(org, kb_id, received)
    message = "File accepted; indexing started" if changed else "File unchanged; nothing to do"
    return call.admitted.json({"message": message, "resource_id": resource_id}, 202)


async def get_resource(call: Call) -> Response:
    kb_id, rid = uuid_arg(call, "knowledge_base_id"), uuid_arg(call, "resource_id")
    row = await _knowledge(call).file(call.admitted.principal.org_id, kb_id, rid)
    return call.admitted.json(file_json(row))


async def delete_resource(call: Call) -> Response:
    kb_id, rid = uuid_arg(call, "knowledge_base_id"), uuid_arg(call, "resource_id")
    await _knowledge(call).delete_file(call.admitted.principal.org_id, kb_id, rid)
    return empty(call.admitted)


async def download_resource(call: Call) -> Response:
    kb_id, rid = uuid_arg(call, "knowledge_base_id"), uuid_arg(call, "resource_id")
    knowledge = _knowledge(call)
    row = await knowledge.file(call.admitted.principal.org_id, kb_id, rid)
    return download(call.admitted, knowledge.original(row), row.content_mime, row.resource_path)


async def search_knowledge_base(call: Call) -> Response:
    kb_id = uuid_arg(call, "knowledge_base_id")
    body = parse_body(SearchRequest, await _body(call))
    found = await _knowledge(call).search(call.admitted.principal.org_id, kb_id, body)
    return call.admitted.json({"results": found})
