"""What a client sends about knowledge bases, checked (contract 3.3, 3.6): Stack AI's
request schemas, closed (unknown fields refused), strict (no ``"true"`` for true), with the
server's limits. Their JSON schemas are the routes' OpenAPI request bodies, so the document
and the checks cannot disagree.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from flowserve.errors import InputError, ParameterError

NO_CONNECTIONS = "connections are not supported by this server"
MAX_CHUNK_SIZE = 8000
M = TypeVar("M", bound=BaseModel)


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ChunkerParams(_Closed):
    chunk_size: int = Field(default=1500, ge=1, le=MAX_CHUNK_SIZE, description="characters")
    chunk_overlap: int = Field(default=500, ge=0, le=MAX_CHUNK_SIZE - 1, description="characters")
    chunker_type: Literal["sentence", "naive"] = "sentence"

    # chunk_overlap < chunk_size is checked on the whole parameters (a PATCH may give one)


class EmbeddingParams(_Closed):
    # omitted: the server's default_embedding_model; null: keyword search only
    embedding_model: str | None = Field(default=None, min_length=1, max_length=200)
    api_key: str | None = Field(default=None, min_length=1, max_length=4096)


class IndexingParams(_Closed):
    ocr: bool = False
    embedding_params: EmbeddingParams = Field(default_factory=EmbeddingParams)
    chunker_params: ChunkerParams = Field(default_factory=ChunkerParams)


def _no_connection(value: Any) -> Any:
    if value not in (None, []):
        raise PydanticCustomError("not_supported", NO_CONNECTIONS)
    return value


class _KnowledgeBaseFields(_Closed):
    connection_id: None = None
    connection_source_ids: list[str] = Field(default_factory=list, max_length=0)
    website_sources: list[dict[str, Any]] = Field(default_factory=list, max_length=0)
    org_level_role: Literal["viewer", "editor", "admin"] | None = None

    _connections = field_validator(
        "connection_id", "connection_source_ids", "website_sources", mode="before"
    )(_no_connection)


class CreateKnowledgeBase(_KnowledgeBaseFields):
    name: str = Field(default="Unnamed Knowledge Base", min_length=1, max_length=2048)
    description: str = Field(default="", max_length=2048)
    indexing_params: IndexingParams = Field(default_factory=IndexingParams)


class UpdateKnowledgeBase(_KnowledgeBaseFields):
    """Only the fields given change; within ``indexing_params``, only the ones given."""

    name: str = Field(default=None, min_length=1, max_length=2048)  # type: ignore[assignment]
    description: str = Field(default=None, max_length=2048)  # type: ignore[assignment]
    indexing_params: IndexingParams | None = None


class SearchRequest(_Closed):
    query: str = Field(min_length=1, max_length=4000)
    top_k: int = Field(default=10, ge=1, le=100)
    # omitted: hybrid where the KBs have vectors, else keyword
    query_strategy: Literal["semantic", "keyword", "hybrid"] | None = None
    output_format: Literal["chunks", "pages", "docs"] = "chunks"


def parse_body(model: type[M], raw: bytes) -> M:
    """The JSON body as ``model``, or one 422 naming every wrong field."""
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        problems = [
            (cast(tuple[str, ...], ("body", *e["loc"])), e["msg"], e["type"])
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise ParameterError(problems) from None


def merged(current: dict[str, Any], given: IndexingParams) -> IndexingParams:
    """``current`` indexing params with the fields given in ``given`` replaced (nested)."""

    def merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in new.items():
            out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
        return out

    data = merge(current, given.model_dump(exclude_unset=True))
    try:
        return IndexingParams.model_validate_json(orjson.dumps(data))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise InputError(first["msg"], ("body", "indexing_params", *first["loc"])) from None


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined (OpenAPI resolves ``$ref`` from
    the document's root, where they are not)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**inline(defs[ref.removeprefix("#/$defs/")]), **inline(rest)}
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return cast(dict[str, Any], inline(schema))
