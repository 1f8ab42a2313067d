"""The openai adapter driven through the real SDK against the OpenAI wire fake."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import pydantic
import pytest
from tests.fakes import OpenAIFake, RecordingServer, Scenario
from tests.fakes.openai_wire import DEFAULT_KEY
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
from flowserve.providers.base import Message, ProviderEnv
from flowserve.providers.openai import OpenAIProvider
from flowserve.providers.resilience import RetryPolicy, resilient_stream

pytestmark = pytest.mark.anyio

RETRYING = RetryPolicy(max_retries=2, base_backoff=0.01)  # the real retry layer, fast
MODEL_NOT_FOUND = {
    "error": {
        "message": "The model `gpt-5x` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
}


@pytest.fixture
async def provider(openai_fake: OpenAIFake) -> AsyncIterator[OpenAIProvider]:
    env = ProviderEnv(
        environ={"OPENAI_API_KEY": DEFAULT_KEY}, settings={"base_url": openai_fake.v1}
    )
    provider = OpenAIProvider(env)
    yield provider
    await provider.aclose()


async def test_streams_text_and_records_usage(
    provider: OpenAIProvider, openai_fake: OpenAIFake
) -> None:
    openai_fake.script(Scenario(tokens=["Hello", ",", " world", "!"], prompt_tokens=9))
    request = make_request("gpt-4o-mini")

    chunks = await collect(provider.stream(request))

    assert chunks == ["Hello", ",", " world", "!"]
    assert request.usage.as_dict() == {"prompt_tokens": 9, "completion_tokens": 4}


async def test_sends_messages_options_and_key(
    provider: OpenAIProvider, openai_fake: OpenAIFake
) -> None:
    request = make_request(
        "gpt-4o-mini",
        system="Be brief.",
        messages=[Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "Bye")],
        options={"max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "stop": ["\n\n"]},
    )

    await collect(provider.stream(request))

    (sent,) = openai_fake.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {DEFAULT_KEY}"
    assert sent.headers["x-stainless-retry-count"] == "0"
    assert sent.body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\n"],
    }


async def test_multibyte_characters_split_across_writes(
    provider: OpenAIProvider, openai_fake: OpenAIFake
) -> None:
    openai_fake.script(Scenario(tokens=MULTIBYTE, split_utf8=True))

    chunks = await collect(provider.stream(make_request()))

    assert "".join(chunks) == "héllo 日本語 🎉"


async def test_rejected_key_is_auth_error_without_the_key(openai_fake: OpenAIFake) -> None:
    wrong = "sk-proj-WRONGwrongWRONG0123456789"
    env = ProviderEnv(environ={"OPENAI_API_KEY": wrong}, settings={"base_url": openai_fake.v1})
    provider = OpenAIProvider(env)
    try:
        with pytest.raises(ProviderAuthError) as caught:
            await collect(provider.stream(make_request()))
    finally:
        await provider.aclose()

    error = caught.value
    assert (error.status, error.provider) == (401, "openai")
    assert "Incorrect API key provided" in str(error)
    assert wrong not in str(error) and "WRONG" not in str(error)


async def test_rate_limit_carries_retry_after_and_is_not_retried_by_the_sdk(
    provider: OpenAIProvider, openai_fake: OpenAIFake
) -> None:
    openai_fake.script(Scenario(status=429, headers={"retry-after-ms": "1500"}))

    with pytest.raises(ProviderRateLimitError) as caught:
        await collect(provider.stream(make_request()))

    assert caught.value.status == 429
    assert caught.value.retry_after == pytest.approx(1.5)
    assert "Rate limit reached" in caught.value.message
    assert len(openai_fake.requests) == 1


async def test_retry_after_in_seconds(provider: OpenAIProvider, openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scenario(status=429, headers={"retry-after": "20"}))

    with pytest.raises(ProviderRateLimitError) as caught:
        await collect(provider.stream(make_request()))

    assert caught.value.retry_after == 20


async def test_server_error(provider: OpenAIProvider, openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scenario(status=500))

    with pytest.raises(ProviderUpstreamError) as caught:
        await collect(provider.stream(make_request()))

    assert caught.value.status == 500
    assert caught.value.message == "The server had an error while processing your request."
    assert len(openai_fake.requests) == 1


async def test_overloaded(provider: OpenAIProvider, openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scenario(status=503))

    with pytest.raises(ProviderOverloadedError) as caught:
        await collect(provider.stream(make_request()))

    assert caught.value.status == 503


async def test_error_event_mid_stream(provider: OpenAIProvider, openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scenario(error_after=2))
    chunks: list[str] = []

    with pytest.raises(ProviderUpstreamError) as caught:
        async for chunk in provider.stream(make_request()):
            chunks.append(chunk)

    assert chunks == ["Hello", ","]
    assert caught.value.message.startswith("The server had an error processing your request.")
    assert caught.value.status is None


async def test_stream_without_finish_reason_is_truncated(
    provider: OpenAIProvider, openai_fake: OpenAIFake
) -> None:
    openai_fake.script(Scenario(truncate_after=2))
    chunks: list[str] = []

    with pytest.raises(ProviderTruncatedError) as caught:
        async for chunk in provider.stream(make_request()):
            chunks.append(chunk)

    assert chunks == ["Hello", ","]
    assert "ended before the response was complete" in str(caught.value)


async def test_dropped_connection(provider: OpenAIProvider, openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scenario(drop_after=3))
    chunks: list[str] = []

    with pytest.raises(ProviderUpstreamError) as caught:
        async for chunk in provider.stream(make_request()):
            chunks.append(chunk)

    assert chunks == ["Hello", ",", " world"]
    assert caught.value.message == "connection to upstream lost"


async def test_json_error_answered_with_200_reaches_the_user_and_is_not_retried(
    provider: OpenAIProvider, openai_fake: OpenAIFake
) -> None:
    # Some proxies and compatible servers answer an error with 200 and a JSON body.
    openai_fake.script(*[Scenario(content_type="application/json", body=MODEL_NOT_FOUND)] * 3)

    with pytest.raises(ProviderError) as caught:
        await collect(resilient_stream(provider, make_request("gpt-5x"), RETRYING))

    assert (type(caught.value), caught.value.message) == (
        ProviderBadRequestError,
        "The model `gpt-5x` does not exist or you do not have access to it.",
    )
    assert len(openai_fake.requests) == 1


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            {
                "message": "Rate limit reached for gpt-4o-mini on requests per min (RPM): "
                "Limit 3, Used 3.",
                "type": "requests",
                "code": "rate_limit_exceeded",
            },
            ProviderRateLimitError,
        ),
        (
            {
                "message": "Incorrect API key provided: sk-proj-abc***xyz",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            },
            ProviderAuthError,
        ),
        (  # the words of the message decide nothing; the type does
            {
                "message": "Too many tokens: the rate limit of this context is exceeded.",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            },
            ProviderBadRequestError,
        ),
        (
            {"message": "The server had an error.", "type": "server_error", "code": None},
            ProviderUpstreamError,
        ),
    ],
    ids=["rate-limit-code", "auth-code", "type-not-words", "server-error-type"],
)
async def test_json_error_answered_with_200_is_classified_by_its_code_and_type(
    provider: OpenAIProvider,
    openai_fake: OpenAIFake,
    error: dict[str, object],
    expected: type[ProviderError],
) -> None:
    openai_fake.script(Scenario(content_type="application/json", body={"error": error}))

    with pytest.raises(ProviderError) as caught:
        await collect(provider.stream(make_request()))

    assert type(caught.value) is expected
    assert caught.value.message == str(error["message"]).replace("sk-proj-abc***xyz", "[redacted]")
    assert caught.value.status == 200


@pytest.mark.parametrize(
    ("content_type", "body", "named"),
    [
        ("text/html; charset=utf-8", "<html><body>Sign in to continue</body></html>", "text/html"),
        (  # a server that ignored ``stream: true``
            "application/json",
            {"id": "chatcmpl-1", "object": "chat.completion", "choices": []},
            "application/json",
        ),
    ],
    ids=["html", "json-without-error"],
)
async def test_a_200_that_is_not_an_event_stream_names_its_content_type(
    provider: OpenAIProvider, openai_fake: OpenAIFake, content_type: str, body: object, named: str
) -> None:
    openai_fake.script(*[Scenario(content_type=content_type, body=body)] * 3)

    with pytest.raises(ProviderError) as caught:
        await collect(resilient_stream(provider, make_request(), RETRYING))

    assert (type(caught.value), caught.value.message) == (
        ProviderProtocolError,
        f"upstream answered HTTP 200 with content type {named}, not an event stream",
    )
    assert len(openai_fake.requests) == 1


async def test_a_redirect_is_not_followed(
    provider: OpenAIProvider, openai_fake: OpenAIFake, elsewhere: RecordingServer
) -> None:
    openai_fake.script(*[Scenario(redirect_to=f"{elsewhere.base_url}/v1/chat/completions")] * 3)

    with pytest.raises(ProviderError) as caught:
        await collect(resilient_stream(provider, make_request(), RETRYING))

    assert [r.headers for r in elsewhere.requests] == []
    assert (type(caught.value), caught.value.message, caught.value.status) == (
        ProviderProtocolError,
        "upstream answered with a redirect (HTTP 307), which is not followed",
        307,
    )
    assert len(openai_fake.requests) == 1


async def test_unreachable_server(openai_fake: OpenAIFake) -> None:
    env = ProviderEnv(
        environ={"OPENAI_API_KEY": DEFAULT_KEY}, settings={"base_url": "http://127.0.0.1:9/v1"}
    )
    provider = OpenAIProvider(env)
    try:
        with pytest.raises(ProviderUpstreamError) as caught:
            await collect(provider.stream(make_request()))
    finally:
        await provider.aclose()
    assert caught.value.message == "could not connect to upstream"


async def test_cancelling_the_consumer_closes_the_upstream(
    provider: OpenAIProvider, openai_fake: OpenAIFake
) -> None:
    openai_fake.script(Scenario(tokens=[f"t{i} " for i in range(500)], gap=0.05))

    seen, cancelled_at = await cancel_after(provider.stream(make_request()), 3)

    assert seen == ["t0 ", "t1 ", "t2 "]
    await wait_until(lambda: openai_fake.disconnects)
    assert openai_fake.disconnects[0] - cancelled_at < 0.1


async def test_closing_the_stream_early_closes_the_upstream(
    provider: OpenAIProvider, openai_fake: OpenAIFake
) -> None:
    openai_fake.script(Scenario(tokens=[f"t{i} " for i in range(500)], gap=0.05))
    stream = provider.stream(make_request())

    assert await anext(stream) == "t0 "
    await stream.aclose()  # type: ignore[attr-defined]

    await wait_until(lambda: openai_fake.disconnects, within=0.1)


async def test_missing_key_fails_before_any_request(openai_fake: OpenAIFake) -> None:
    provider = OpenAIProvider(ProviderEnv(environ={}, settings={"base_url": openai_fake.v1}))

    with pytest.raises(ProviderAuthError) as caught:
        await collect(provider.stream(make_request()))

    assert caught.value.message == "environment variable OPENAI_API_KEY is not set"
    assert openai_fake.requests == []
    assert provider.missing_credentials(None) == "OPENAI_API_KEY"


async def test_node_can_name_its_key_variable(openai_fake: OpenAIFake) -> None:
    env = ProviderEnv(environ={"TEAM_KEY": DEFAULT_KEY}, settings={"base_url": openai_fake.v1})
    provider = OpenAIProvider(env)
    try:
        assert await collect(provider.stream(make_request(api_key_env="TEAM_KEY")))
        with pytest.raises(ProviderAuthError, match="environment variable OPENAI_API_KEY is not"):
            await collect(provider.stream(make_request()))
    finally:
        await provider.aclose()
    assert len(openai_fake.requests) == 1


async def test_clients_are_reused_per_base_url_and_key(
    provider: OpenAIProvider, openai_fake: OpenAIFake
) -> None:
    await collect(provider.stream(make_request()))
    await collect(provider.stream(make_request()))
    await collect(provider.stream(make_request(base_url=openai_fake.v1 + "/")))

    assert len(provider._clients) == 2


@pytest.mark.parametrize(
    "options",
    [
        {"top_k": 40},
        {"temperature": 2.5},
        {"top_p": 1.5},
        {"max_tokens": 0},
        {"stop": []},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"seed": 1},
    ],
)
def test_unsupported_or_out_of_range_options_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        OpenAIProvider.Options.model_validate(options)


def test_supported_options_validate() -> None:
    options = {"max_tokens": 10, "temperature": 2, "top_p": 0, "stop": ["x"]}
    assert OpenAIProvider.Options.model_validate(options).model_dump() == options


def test_module_import_does_not_import_the_sdk() -> None:
    code = (
        "import sys, flowserve.providers.openai, flowserve.providers.anthropic, "
        "flowserve.providers.replicate, flowserve.providers.resilience; "
        "print(sorted({'openai', 'anthropic', 'replicate'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
