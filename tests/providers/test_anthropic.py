"""The anthropic adapter driven through the real SDK against the Anthropic wire fake."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pydantic
import pytest
from tests.fakes import AnthropicFake, RecordingServer, Scenario
from tests.fakes.anthropic_wire import DEFAULT_KEY
from tests.providers._support import MULTIBYTE, cancel_after, collect, make_request, wait_until

from flowserve.errors import (
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderError,
    ProviderOverloadedError,
    ProviderProtocolError,
    ProviderRateLimitError,
    ProviderTruncatedError,
    ProviderUpstreamError,
)
from flowserve.providers.anthropic import DEFAULT_MAX_TOKENS, AnthropicProvider
from flowserve.providers.base import Message, ProviderEnv
from flowserve.providers.resilience import RetryPolicy, resilient_stream

pytestmark = pytest.mark.anyio

MODEL = "claude-haiku-4-5"


@pytest.fixture
async def provider(anthropic_fake: AnthropicFake) -> AsyncIterator[AnthropicProvider]:
    env = ProviderEnv(
        environ={"ANTHROPIC_API_KEY": DEFAULT_KEY}, settings={"base_url": anthropic_fake.base_url}
    )
    provider = AnthropicProvider(env)
    yield provider
    await provider.aclose()


async def test_streams_text_and_records_usage(
    provider: AnthropicProvider, anthropic_fake: AnthropicFake
) -> None:
    anthropic_fake.script(Scenario(tokens=["Hello", " there", "!"], prompt_tokens=11))
    request = make_request(MODEL)

    chunks = await collect(provider.stream(request))

    assert chunks == ["Hello", " there", "!"]
    assert request.usage.as_dict() == {"prompt_tokens": 11, "completion_tokens": 3}


async def test_sends_system_default_max_tokens_and_mapped_options(
    provider: AnthropicProvider, anthropic_fake: AnthropicFake
) -> None:
    request = make_request(
        MODEL,
        system="Be brief.",
        messages=[Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "Bye")],
        options={"temperature": 0.5, "top_p": 0.9, "stop": ["END"]},
    )

    await collect(provider.stream(request))

    (sent,) = anthropic_fake.requests
    assert sent.headers["x-api-key"] == DEFAULT_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body == {
        "model": MODEL,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ],
        "stream": True,
        "system": "Be brief.",
        "temperature": 0.5,
        "top_p": 0.9,
        "stop_sequences": ["END"],
    }


async def test_node_max_tokens_is_sent(
    provider: AnthropicProvider, anthropic_fake: AnthropicFake
) -> None:
    await collect(provider.stream(make_request(MODEL, options={"max_tokens": 77})))

    assert anthropic_fake.requests[0].body["max_tokens"] == 77


async def test_multibyte_characters_split_across_writes(
    provider: AnthropicProvider, anthropic_fake: AnthropicFake
) -> None:
    anthropic_fake.script(Scenario(tokens=MULTIBYTE, split_utf8=True))

    chunks = await collect(provider.stream(make_request(MODEL)))

    assert "".join(chunks) == "héllo 日本語 🎉"


async def test_rejected_key_is_auth_error_without_the_key(anthropic_fake: AnthropicFake) -> None:
    wrong = "sk-ant-api03-WRONGwrongWRONG0123"
    env = ProviderEnv(
        environ={"ANTHROPIC_API_KEY": wrong}, settings={"base_url": anthropic_fake.base_url}
    )
    provider = AnthropicProvider(env)
    try:
        with pytest.raises(ProviderAuthError) as caught:
            await collect(provider.stream(make_request(MODEL)))
    finally:
        await provider.aclose()

    assert (caught.value.status, caught.value.message) == (401, "invalid x-api-key")
    assert wrong not in str(caught.value)


async def test_rate_limit_carries_retry_after(
    provider: AnthropicProvider, anthropic_fake: AnthropicFake
) -> None:
    anthropic_fake.script(Scenario(status=429, headers={"retry-after": "7"}))

    with pytest.raises(ProviderRateLimitError) as caught:
        await collect(provider.stream(make_request(MODEL)))

    assert (caught.value.status, caught.value.retry_after) == (429, 7)
    assert "rate limit" in caught.value.message
    assert len(anthropic_fake.requests) == 1


async def test_server_error(provider: AnthropicProvider, anthropic_fake: AnthropicFake) -> None:
    anthropic_fake.script(Scenario(status=500))

    with pytest.raises(ProviderUpstreamError) as caught:
        await collect(provider.stream(make_request(MODEL)))

    assert (caught.value.status, caught.value.message) == (500, "Internal server error")
    assert len(anthropic_fake.requests) == 1


async def test_http_529_is_overloaded(
    provider: AnthropicProvider, anthropic_fake: AnthropicFake
) -> None:
    anthropic_fake.script(Scenario(status=529))

    with pytest.raises(ProviderOverloadedError) as caught:
        await collect(provider.stream(make_request(MODEL)))

    assert (caught.value.status, caught.value.message) == (529, "Overloaded")


async def test_bad_request(provider: AnthropicProvider, anthropic_fake: AnthropicFake) -> None:
    anthropic_fake.script(Scenario(status=404))

    with pytest.raises(ProviderBadRequestError) as caught:
        await collect(provider.stream(make_request("claude-nope")))

    assert (caught.value.status, caught.value.message) == (404, "model: claude-nope")


async def test_overloaded_error_event_mid_stream(
    provider: AnthropicProvider, anthropic_fake: AnthropicFake
) -> None:
    anthropic_fake.script(Scenario(error_after=2))
    chunks: list[str] = []

    with pytest.raises(ProviderOverloadedError) as caught:
        async for chunk in provider.stream(make_request(MODEL)):
            chunks.append(chunk)

    assert chunks == ["Hello", ","]
    assert caught.value.message == "Overloaded"
    assert caught.value.status is None


async def test_other_error_event_mid_stream(
    provider: AnthropicProvider, anthropic_fake: AnthropicFake
) -> None:
    body = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
    anthropic_fake.script(Scenario(error_after=1, error_body=body))

    with pytest.raises(ProviderUpstreamError) as caught:
        await collect(provider.stream(make_request(MODEL)))

    assert type(caught.value) is ProviderUpstreamError
    assert caught.value.message == "Internal server error"


async def test_a_redirect_is_not_followed_and_the_key_stays_here(
    provider: AnthropicProvider, anthropic_fake: AnthropicFake, elsewhere: RecordingServer
) -> None:
    # httpx strips Authorization on a cross-origin redirect, but not x-api-key.
    anthropic_fake.script(*[Scenario(redirect_to=f"{elsewhere.base_url}/v1/messages")] * 3)
    policy = RetryPolicy(max_retries=2, base_backoff=0.01)

    with pytest.raises(ProviderError) as caught:
        await collect(resilient_stream(provider, make_request(MODEL), policy))

    assert [r.headers.get("x-api-key") for r in elsewhere.requests] == []
    assert (type(caught.value), caught.value.message, caught.value.status) == (
        ProviderProtocolError,
        "upstream answered with a redirect (HTTP 307), which is not followed",
        307,
    )
    assert len(anthropic_fake.requests) == 1


async def test_stream_without_message_stop_is_truncated(
    provider: AnthropicProvider, anthropic_fake: AnthropicFake
) -> None:
    anthropic_fake.script(Scenario(truncate_after=2))
    chunks: list[str] = []

    with pytest.raises(ProviderTruncatedError):
        async for chunk in provider.stream(make_request(MODEL)):
            chunks.append(chunk)

    assert chunks == ["Hello", ","]


async def test_dropped_connection(
    provider: AnthropicProvider, anthropic_fake: AnthropicFake
) -> None:
    anthropic_fake.script(Scenario(drop_after=3))
    chunks: list[str] = []

    with pytest.raises(ProviderUpstreamError) as caught:
        async for chunk in provider.stream(make_request(MODEL)):
            chunks.append(chunk)

    assert chunks == ["Hello", ",", " world"]
    assert caught.value.message == "connection to upstream lost"


async def test_cancelling_the_consumer_closes_the_upstream(
    provider: AnthropicProvider, anthropic_fake: AnthropicFake
) -> None:
    anthropic_fake.script(Scenario(tokens=[f"t{i} " for i in range(500)], gap=0.05))

    seen, cancelled_at = await cancel_after(provider.stream(make_request(MODEL)), 3)

    assert seen == ["t0 ", "t1 ", "t2 "]
    await wait_until(lambda: anthropic_fake.disconnects)
    assert anthropic_fake.disconnects[0] - cancelled_at < 0.1


async def test_missing_key_fails_before_any_request(anthropic_fake: AnthropicFake) -> None:
    env = ProviderEnv(environ={"OTHER": "x"}, settings={"base_url": anthropic_fake.base_url})
    provider = AnthropicProvider(env)

    with pytest.raises(ProviderAuthError) as caught:
        await collect(provider.stream(make_request(MODEL)))

    assert caught.value.message == "environment variable ANTHROPIC_API_KEY is not set"
    assert anthropic_fake.requests == []


async def test_node_can_name_its_key_variable(anthropic_fake: AnthropicFake) -> None:
    env = ProviderEnv(
        environ={"MY_KEY": DEFAULT_KEY}, settings={"base_url": anthropic_fake.base_url}
    )
    provider = AnthropicProvider(env)
    try:
        assert await collect(provider.stream(make_request(MODEL, api_key_env="MY_KEY")))
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    "options", [{"temperature": 1.5}, {"top_k": 5}, {"max_tokens": 0}, {"stop": []}, {"n": 2}]
)
def test_unsupported_or_out_of_range_options_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        AnthropicProvider.Options.model_validate(options)
