"""Embedders: the OpenAI and OpenAI-compatible ones through the official SDK against a fake
``/v1/embeddings`` speaking OpenAI's wire format, and the local one on the real SmolLM2 GGUF."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest

from flowserve.errors import ProviderAuthError, ProviderBadRequestError
from flowserve.knowledge.embedders import EmbedderRegistry
from flowserve.providers.base import ProviderEnv
from flowserve.providers.endpoints import EndpointPolicy
from tests.fakes._server import FakeServer, RecordedRequest, serve

KEY = "sk-test-embed-0123456789abcdef"
DIMS = 64


def bag_of_words(text: str) -> list[float]:
    """A deterministic vector: each word adds 1 at its hash's position (so texts sharing
    words are similar), L2-normalised."""
    vector = [0.0] * DIMS
    for word in re.findall(r"\w+", text.lower()):
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIMS] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class EmbeddingsFake(FakeServer):
    """``POST /v1/embeddings`` as OpenAI answers it: ``{"object": "list", "data": [{"object":
    "embedding", "index", "embedding"}], "model", "usage"}``; ``data`` is sent in reverse
    order (the index, not the position, says which input a vector is for)."""

    def __init__(self) -> None:
        self.api_key: str | None = KEY
        super().__init__()

    async def handle(self, request: RecordedRequest, receive: Any, send: Any) -> None:
        if (request.method, request.path) != ("POST", "/v1/embeddings"):
            await self.send_json(send, 404, {"error": {"message": "Unknown request URL"}})
            return
        presented = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key is not None and presented != self.api_key:
            error = {
                "message": f"Incorrect API key provided: {presented}.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
            await self.send_json(send, 401, {"error": error})
            return
        scenario = self.next_scenario()
        if scenario.status != 200:
            await self.send_json(send, scenario.status, {"error": {"message": "refused"}})
            return
        texts = request.body["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": bag_of_words(t)}
            for i, t in enumerate(texts)
        ][::-1]
        tokens = sum(len(t.split()) for t in texts)
        await self.send_json(
            send,
            200,
            {
                "object": "list",
                "data": data,
                "model": request.body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


@pytest.fixture(scope="module")
def fake() -> Iterator[EmbeddingsFake]:
    with serve(EmbeddingsFake()) as app:
        yield app


@pytest.fixture(autouse=True)
def _reset(fake: EmbeddingsFake) -> None:
    fake.reset()
    fake.api_key = KEY


def registry(settings: dict[str, Any], environ: dict[str, str] | None = None) -> EmbedderRegistry:
    env = ProviderEnv(environ=environ or {}, settings=settings)
    return EmbedderRegistry.from_entry_points(env, EndpointPolicy())


def embed(reg: EmbedderRegistry, name: str, texts: list[str]) -> list[list[float]]:
    async def go() -> list[list[float]]:
        try:
            return await reg.embed(name, texts)
        finally:
            await reg.aclose()

    return asyncio.run(go())


def test_openai_embeddings_in_order_and_batched(fake: EmbeddingsFake):
    reg = registry(
        {"openai": {"base_url": fake.base_url + "/v1", "embedding_batch_size": 2}},
        {"OPENAI_API_KEY": KEY},
    )
    assert reg.problem("openai.text-embedding-3-small") is None
    texts = ["open a file", "close a socket", "read bytes", "write bytes", "map memory"]
    vectors = embed(reg, "openai.text-embedding-3-small", texts)
    assert vectors == [pytest.approx(bag_of_words(t)) for t in texts]
    sent = fake.requests_to("/v1/embeddings")
    assert [r.body["input"] for r in sent] == [texts[0:2], texts[2:4], texts[4:5]]
    assert all(r.body["model"] == "text-embedding-3-small" for r in sent)
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in sent)


def test_openai_needs_its_key_and_never_repeats_it(fake: EmbeddingsFake):
    assert "OPENAI_API_KEY" in (registry({}).problem("openai.text-embedding-3-small") or "")
    wrong = "sk-wrong-key-that-must-not-leak"
    reg = registry({"openai": {"base_url": fake.base_url + "/v1"}}, {"OPENAI_API_KEY": wrong})
    with pytest.raises(ProviderAuthError) as caught:
        embed(reg, "openai.text-embedding-3-small", ["x"])
    assert wrong not in str(caught.value)
    assert "401" in str(caught.value)


def test_openai_compatible_base_url_checked_by_policy(fake: EmbeddingsFake):
    assert "no base_url" in (registry({}).problem("openai-compatible.nomic-embed-text") or "")
    outside = registry({"openai-compatible": {"base_url": "https://embed.example/v1"}})
    assert "not allowed" in (outside.problem("openai-compatible.nomic-embed-text") or "")
    tricky = registry({"openai-compatible": {"base_url": "http://127.0.0.1:9@evil.example/v1"}})
    assert tricky.problem("openai-compatible.x") is not None
    fake.api_key = None  # a local server that wants no key
    reg = registry({"openai-compatible": {"base_url": fake.base_url + "/v1"}})
    assert reg.problem("openai-compatible.nomic-embed-text") is None
    assert embed(reg, "openai-compatible.nomic-embed-text", ["hello world"]) == [
        pytest.approx(bag_of_words("hello world"))
    ]
    assert fake.requests[-1].headers["authorization"] == "Bearer not-needed"


def test_upstream_refusal_is_a_provider_error(fake: EmbeddingsFake):
    from tests.fakes._server import Scenario

    fake.api_key = None
    fake.script(Scenario(status=400))
    reg = registry({"openai-compatible": {"base_url": fake.base_url + "/v1"}})
    with pytest.raises(ProviderBadRequestError):
        embed(reg, "openai-compatible.m", ["x"])


def test_names_are_checked():
    reg = registry({})
    assert "<provider>.<model>" in (reg.problem("no-dot") or "")
    assert "unknown embedding provider" in (reg.problem("nope.model") or "")
    assert "unknown local embedding model" in (reg.problem("local./etc/passwd") or "")


@pytest.mark.slow
def test_local_smollm2_vectors_are_normalised_and_deterministic():
    reg = registry({"local": {"n_threads": 2}})
    assert reg.problem("local.smollm2-135m") is None
    texts = ["open and possibly create a file", "open and possibly create a file", "sleep"]
    vectors = embed(reg, "local.smollm2-135m", texts)
    assert [len(v) for v in vectors] == [576, 576, 576]
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    assert vectors[0] == pytest.approx(vectors[1], abs=1e-6)
    assert vectors[0] != pytest.approx(vectors[2], abs=1e-3)
