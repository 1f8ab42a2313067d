"""resilient_stream: retries before the first token, time limits, and closing the inner stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import anyio
import pytest
from tests.fakes import OpenAIFake, Scenario
from tests.fakes.openai_wire import DEFAULT_KEY
from tests.providers._support import cancel_after, collect, make_request, wait_until

from flowserve.errors import (
    ProviderAuthError,
    ProviderRateLimitError,
    ProviderTimeoutError,
    ProviderUpstreamError,
)
from flowserve.providers.base import LLMRequest, Provider, ProviderEnv
from flowserve.providers.openai import OpenAIProvider
from flowserve.providers.resilience import RetryPolicy, resilient_stream, stream_timeout

pytestmark = pytest.mark.anyio

Step = str | float | Exception  # a token, a pause in seconds, or a failure


class Scripted(Provider):
    """Each call to stream() plays the next script: tokens, pauses and failures."""

    name = "scripted-test"

    def __init__(self, *scripts: Sequence[Step]) -> None:
        super().__init__(ProviderEnv(environ={}, settings={}))
        self.scripts = list(scripts)
        self.calls = 0
        self.closed = 0

    def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        script = self.scripts[self.calls]
        self.calls += 1
        return self._play(script, request)

    async def _play(self, script: Sequence[Step], request: LLMRequest) -> AsyncIterator[str]:
        try:
            request.usage.prompt_tokens = 100 + self.calls
            for step in script:
                if isinstance(step, Exception):
                    raise step
                if isinstance(step, float):
                    await anyio.sleep(step)
                else:
                    yield step
        finally:
            self.closed += 1


FAST = RetryPolicy(base_backoff=0.01)


def rate_limited(retry_after: float | None = None) -> ProviderRateLimitError:
    return ProviderRateLimitError("slow down", provider="scripted-test", retry_after=retry_after)


async def test_passes_a_healthy_stream_through() -> None:
    provider = Scripted(["a", "b", "c"])

    assert await collect(resilient_stream(provider, make_request(), FAST)) == ["a", "b", "c"]
    assert (provider.calls, provider.closed) == (1, 1)


async def test_empty_stream() -> None:
    provider = Scripted([])

    assert await collect(resilient_stream(provider, make_request(), FAST)) == []


async def test_retries_before_the_first_token_honouring_retry_after() -> None:
    provider = Scripted([rate_limited(retry_after=0.2)], ["ok"])
    started = time.monotonic()

    assert await collect(resilient_stream(provider, make_request(), FAST)) == ["ok"]

    assert 0.2 <= time.monotonic() - started < 1.0
    assert (provider.calls, provider.closed) == (2, 2)


async def test_retry_after_is_capped() -> None:
    provider = Scripted([rate_limited(retry_after=3600)], ["ok"])
    policy = RetryPolicy(max_retry_after=0.05)
    started = time.monotonic()

    assert await collect(resilient_stream(provider, make_request(), policy)) == ["ok"]
    assert time.monotonic() - started < 1.0


async def test_exponential_backoff_without_retry_after() -> None:
    failure = ProviderUpstreamError("bad gateway", status=502)
    provider = Scripted([failure], [failure], ["ok"])
    started = time.monotonic()

    chunks = await collect(
        resilient_stream(provider, make_request(), RetryPolicy(base_backoff=0.1))
    )

    assert chunks == ["ok"]
    assert 0.3 <= time.monotonic() - started < 1.0  # 0.1 then 0.2


async def test_gives_up_after_max_retries() -> None:
    provider = Scripted([rate_limited()], [rate_limited()], [rate_limited()], ["never"])

    with pytest.raises(ProviderRateLimitError):
        await collect(resilient_stream(provider, make_request(), RetryPolicy(base_backoff=0.01)))

    assert provider.calls == 3  # the first try and max_retries=2


async def test_non_retryable_errors_are_not_retried() -> None:
    provider = Scripted([ProviderAuthError("bad key", status=401)], ["never"])

    with pytest.raises(ProviderAuthError):
        await collect(resilient_stream(provider, make_request(), FAST))

    assert provider.calls == 1


async def test_never_retries_once_a_token_was_yielded() -> None:
    provider = Scripted(["partial", ProviderUpstreamError("connection to upstream lost")], ["x"])
    seen: list[str] = []

    with pytest.raises(ProviderUpstreamError):
        async for chunk in resilient_stream(provider, make_request(), FAST):
            seen.append(chunk)

    assert seen == ["partial"]
    assert provider.calls == 1


async def test_a_wait_past_the_first_token_deadline_is_not_taken() -> None:
    provider = Scripted([rate_limited(retry_after=5)], ["never"])
    policy = RetryPolicy(ttft_timeout=1.0)
    started = time.monotonic()

    with pytest.raises(ProviderRateLimitError):
        await collect(resilient_stream(provider, make_request(), policy))

    assert time.monotonic() - started < 0.5
    assert provider.calls == 1


async def test_no_first_token_in_time() -> None:
    provider = Scripted([10.0, "late"])
    started = time.monotonic()

    with pytest.raises(ProviderTimeoutError) as caught:
        await collect(resilient_stream(provider, make_request(), RetryPolicy(ttft_timeout=0.1)))

    assert caught.value.message == "no first token within 0.1s"
    assert caught.value.provider == "scripted-test"
    assert time.monotonic() - started < 0.5
    assert provider.closed == 1


async def test_stream_not_complete_in_time() -> None:
    provider = Scripted(["a", 0.05, "b", 10.0, "c"])
    seen: list[str] = []

    policy = RetryPolicy(total_timeout=0.3)
    with pytest.raises(ProviderTimeoutError) as caught:
        stream = resilient_stream(provider, make_request(), policy)
        try:
            # What the runner does: one timeout around its whole loop.
            async with asyncio.timeout(policy.total_timeout):
                async for chunk in stream:
                    seen.append(chunk)
        except TimeoutError:
            raise stream_timeout(policy, provider.name) from None
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    assert seen == ["a", "b"]
    assert caught.value.message == "stream did not complete within 0.3s"
    assert provider.closed == 1


async def test_deadline_is_reported_even_if_the_adapter_converts_the_cancellation() -> None:
    class Converting(Scripted):
        async def _play(self, script: Sequence[Step], request: LLMRequest) -> AsyncIterator[str]:
            try:
                await anyio.sleep(10)
            except anyio.get_cancelled_exc_class():
                raise ProviderUpstreamError("request was interrupted") from None
            yield "never"

    with pytest.raises(ProviderTimeoutError, match="no first token"):
        await collect(
            resilient_stream(Converting([]), make_request(), RetryPolicy(ttft_timeout=0.1))
        )


async def test_usage_is_from_the_attempt_that_answered() -> None:
    provider = Scripted([rate_limited(retry_after=0.01)], ["ok"])
    request = make_request()

    await collect(resilient_stream(provider, request, FAST))

    assert request.usage.prompt_tokens == 102


async def test_cancelling_the_consumer_closes_the_inner_stream() -> None:
    provider = Scripted(["a", "b", 10.0, "c"])

    seen, _ = await cancel_after(resilient_stream(provider, make_request(), FAST), 2)

    assert seen == ["a", "b"]
    assert provider.closed == 1


async def test_closing_the_wrapper_at_a_yield_closes_the_inner_stream() -> None:
    provider = Scripted(["a", "b", "c"])
    stream = resilient_stream(provider, make_request(), FAST)

    assert await anext(stream) == "a"
    assert provider.closed == 0
    await stream.aclose()  # type: ignore[attr-defined]

    assert provider.closed == 1


# -- with a real adapter and its wire fake --


@pytest.fixture
async def openai(openai_fake: OpenAIFake) -> AsyncIterator[OpenAIProvider]:
    env = ProviderEnv(
        environ={"OPENAI_API_KEY": DEFAULT_KEY}, settings={"base_url": openai_fake.v1}
    )
    provider = OpenAIProvider(env)
    yield provider
    await provider.aclose()


async def test_retries_an_upstream_429_then_streams(
    openai: OpenAIProvider, openai_fake: OpenAIFake
) -> None:
    openai_fake.script(Scenario(status=429, headers={"retry-after-ms": "20"}), Scenario())

    chunks = await collect(resilient_stream(openai, make_request(), FAST))

    assert "".join(chunks) == "Hello, world!"
    assert len(openai_fake.requests) == 2


async def test_cancel_through_the_wrapper_reaches_the_upstream(
    openai: OpenAIProvider, openai_fake: OpenAIFake
) -> None:
    openai_fake.script(Scenario(tokens=[f"t{i} " for i in range(500)], gap=0.05))

    _, cancelled_at = await cancel_after(resilient_stream(openai, make_request(), FAST), 3)

    await wait_until(lambda: openai_fake.disconnects)
    assert openai_fake.disconnects[0] - cancelled_at < 0.1


async def test_upstream_ttft_timeout_closes_the_connection(
    openai: OpenAIProvider, openai_fake: OpenAIFake
) -> None:
    # The fake sends its role chunk at once but the first text only after a long pause.
    openai_fake.script(Scenario(tokens=["", "late"], gap=5.0))

    with pytest.raises(ProviderTimeoutError, match=r"no first token within 0\.2s"):
        await collect(resilient_stream(openai, make_request(), RetryPolicy(ttft_timeout=0.2)))

    await wait_until(lambda: openai_fake.disconnects, within=0.5)
