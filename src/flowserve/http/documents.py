"""Per-user documents, on Stack AI's path ``/documents/{org}/{flow}/{node}/{user_id}``
(contract 3.5): a bucket of files per user of a flow's ``files`` node.

A private key of the org in the path is needed (another org's key: 401, a public key: 403):
``user_id`` is whatever the caller says, so only the org's servers may name one. An upload is
checked, parsed, chunked and indexed before the answer, so the next run with that
``user_id`` sees it; a file that cannot be read is a 422 and changes nothing.
"""

from __future__ import annotations

import unicodedata

from starlette.responses import Response

from flowserve.errors import ParameterError
from flowserve.http.knowledge import download, upload
from flowserve.http.routing import Call, Param
from flowserve.knowledge.service import Bucket, KnowledgeService

NODE = Param(
    "node_id", where="path", description="a files node of the flow", min_length=1, max_length=64
)
USER = Param(
    "user_id", where="path", description="the user (and conversation) the files belong to",
    min_length=1, max_length=256,
)  # fmt: skip
FILENAME = Param("filename", description="a file's name, as uploaded", min_length=1, max_length=255)


def _user_id(call: Call) -> str:
    user_id = str(call.args["user_id"])
    if "/" in user_id or any(unicodedata.category(c) == "Cc" for c in user_id):
        raise ParameterError(
            [(("path", "user_id"), "must not hold '/' or control characters", "value_error")]
        )
    return user_id


def _knowledge(call: Call) -> KnowledgeService:
    return call.http.services.knowledge


async def _bucket(call: Call, create: bool = False) -> Bucket | None:
    user_id = _user_id(call)
    args = call.args
    return await _knowledge(call).bucket(
        args["org"], args["flow_id"], args["node_id"], user_id, create
    )


async def list_documents(call: Call) -> Response:
    return call.admitted.json(await _knowledge(call).documents(await _bucket(call)))


async def upload_document(call: Call) -> Response:
    bucket = await _bucket(call)  # 404 before the body is read
    received = await upload(call, call.http.services.settings.documents_max_file_bytes)
    try:
        bucket = bucket or await _bucket(call, create=True)
    except BaseException:
        received.discard()
        raise
    assert bucket is not None
    return call.admitted.json(await _knowledge(call).add_document(bucket, received))


async def delete_document(call: Call) -> Response:
    await _knowledge(call).delete_document(await _bucket(call), call.args["filename"])
    return call.admitted.json({"deleted": True})


async def download_document(call: Call) -> Response:
    knowledge = _knowledge(call)
    row = await knowledge.document(await _bucket(call), call.args["filename"])
    return download(call.admitted, knowledge.original(row), row.content_mime, row.resource_path)


async def refuse_empty_user(call: Call) -> Response:
    """``/documents/{org}/{flow}/{node}/`` (no user_id): the 422 naming it."""
    raise ParameterError(
        [(("path", "user_id"), "String should have at least 1 character", "string_too_short")]
    )
