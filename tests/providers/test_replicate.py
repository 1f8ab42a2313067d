"""The replicate adapter driven through the real SDK against the Replicate wire fake."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pydantic
import pytest
from tests.fakes import RecordingServer, ReplicateFake, Scenario
from tests.fakes.replicate_wire import DEFAULT_TOKEN, VERSION
from tests.providers._support import MULTIBYTE, cancel_after, collect, make_request, wait_until

from flowserve.errors import (
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderCancelledError,
    ProviderError,
    ProviderOverloadedError,
    ProviderProtocolError,
    ProviderRateLimitError,
    ProviderTruncatedError,
    ProviderUpstreamError,
)
from flowserve.providers.base import Message, ProviderEnv
from flowserve.providers.replicate import ReplicateProvider, render_prompt
from flowserve.providers.resilience import RetryPolicy, resilient_stream

pytestmark = pytest.mark.anyio

MODEL = "meta/meta-llama-3-8b-instruct"
RETRYING = RetryPolicy(max_retries=2, base_backoff=0.01)  # the real retry layer, fast


@pytest.fixture
async def provider(replicate_fake: ReplicateFake) -> AsyncIterator[ReplicateProvider]:
    env = ProviderEnv(
        environ={"REPLICATE_API_TOKEN": DEFAULT_TOKEN},
        settings={"base_url": replicate_fake.base_url},
    )
    provider = ReplicateProvider(env)
    yield provider
    await provider.aclose()


async def test_streams_text_and_records_usage(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    tokens = ["Once", " upon", " a time", "\nline two\nline three", "!"]
    replicate_fake.script(Scenario(tokens=tokens, prompt_tokens=13))
    request = make_request(MODEL)

    chunks = await collect(provider.stream(request))

    assert chunks == tokens  # leading spaces and multi-line tokens survive the SSE framing
    assert request.usage.as_dict() == {"prompt_tokens": 13, "completion_tokens": 5}
    assert replicate_fake.cancels == []


async def test_creates_the_prediction_with_mapped_inputs(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    request = make_request(
        MODEL,
        system="Be brief.",
        options={"max_tokens": 64, "temperature": 0.7, "top_p": 0.95, "stop": ["</s>", "User:"]},
    )

    await collect(provider.stream(request))

    create, stream, reload = replicate_fake.requests
    assert (create.method, create.path) == ("POST", f"/v1/models/{MODEL}/predictions")
    assert create.headers["authorization"] == f"Bearer {DEFAULT_TOKEN}"
    assert create.body == {
        "input": {
            "prompt": "Say hello",
            "system_prompt": "Be brief.",
            "max_new_tokens": 64,
            "temperature": 0.7,
            "top_p": 0.95,
            "stop_sequences": "</s>,User:",
        },
        "stream": True,
    }
    assert (stream.method, stream.path) == ("GET", f"/stream/{create_id(replicate_fake)}")
    assert stream.headers["accept"] == "text/event-stream"
    assert (reload.method, reload.path) == ("GET", f"/v1/predictions/{create_id(replicate_fake)}")


async def test_pinned_version_uses_the_predictions_endpoint(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    assert await collect(provider.stream(make_request(f"{MODEL}:{VERSION}")))

    create = replicate_fake.requests[0]
    assert create.path == "/v1/predictions"
    assert create.body["version"] == VERSION


def test_conversation_is_rendered_into_one_prompt() -> None:
    messages = [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "Bye")]

    assert render_prompt(messages) == "User: Hi\nAssistant: Hello!\nUser: Bye\nAssistant:"
    assert render_prompt([Message("user", "Just this")]) == "Just this"


async def test_url_looking_tokens_come_back_as_text(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    # The SDK turns tokens starting with https: or data: into FileOutput objects.
    tokens = ["See ", "https://example.com/a.png", " and ", "data: not a file"]
    replicate_fake.script(Scenario(tokens=tokens))

    assert await collect(provider.stream(make_request(MODEL))) == tokens


async def test_multibyte_characters_split_across_writes(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    replicate_fake.script(Scenario(tokens=MULTIBYTE, split_utf8=True))

    chunks = await collect(provider.stream(make_request(MODEL)))

    assert "".join(chunks) == "héllo 日本語 🎉"


async def test_rejected_token_is_auth_error_without_the_token(
    replicate_fake: ReplicateFake,
) -> None:
    wrong = "r8_WRONGwrongWRONG0123456789"
    env = ProviderEnv(
        environ={"REPLICATE_API_TOKEN": wrong}, settings={"base_url": replicate_fake.base_url}
    )
    provider = ReplicateProvider(env)
    try:
        with pytest.raises(ProviderAuthError) as caught:
            await collect(provider.stream(make_request(MODEL)))
    finally:
        await provider.aclose()

    assert caught.value.status == 401
    assert caught.value.message == "You did not pass a valid authentication token"
    assert wrong not in str(caught.value)


async def test_rate_limit_carries_retry_after(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    replicate_fake.script(Scenario(status=429, headers={"retry-after": "7"}))

    with pytest.raises(ProviderRateLimitError) as caught:
        await collect(provider.stream(make_request(MODEL)))

    assert (caught.value.status, caught.value.retry_after) == (429, 7)
    assert caught.value.message.startswith("Request was throttled")
    assert len(replicate_fake.requests) == 1


async def test_server_errors(provider: ReplicateProvider, replicate_fake: ReplicateFake) -> None:
    replicate_fake.script(Scenario(status=500), Scenario(status=503))

    with pytest.raises(ProviderUpstreamError) as first:
        await collect(provider.stream(make_request(MODEL)))
    with pytest.raises(ProviderOverloadedError) as second:
        await collect(provider.stream(make_request(MODEL)))

    assert (first.value.status, first.value.message) == (500, "Something went wrong")
    assert second.value.status == 503
    assert first.value.retry_after is None


async def test_model_that_cannot_stream(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    replicate_fake.script(Scenario(status=422))

    with pytest.raises(ProviderBadRequestError) as caught:
        await collect(provider.stream(make_request(MODEL)))

    assert (caught.value.status, caught.value.message) == (
        422,
        "This model does not support streaming",
    )


async def test_error_event_mid_stream(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    replicate_fake.script(Scenario(error_after=2))
    chunks: list[str] = []

    with pytest.raises(ProviderUpstreamError) as caught:
        async for chunk in provider.stream(make_request(MODEL)):
            chunks.append(chunk)

    assert chunks == ["Hello", ","]
    assert caught.value.message == "CUDA out of memory. Tried to allocate 2.00 GiB"


async def test_a_prediction_canceled_upstream_is_not_retried(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    # Canceled (from the dashboard, by a deadline...) before any output: a cancel is final.
    replicate_fake.script(*[Scenario(tokens=[], done_reason="canceled")] * 3)

    with pytest.raises(ProviderError) as caught:
        await collect(resilient_stream(provider, make_request(MODEL), RETRYING))

    assert len(replicate_fake.predictions) == 1
    assert (type(caught.value), caught.value.message) == (
        ProviderCancelledError,
        "prediction was canceled upstream",
    )
    assert replicate_fake.cancels == []  # already canceled: nothing to cancel


async def test_a_prediction_that_ended_for_an_unknown_reason_is_not_retried(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    replicate_fake.script(*[Scenario(tokens=[], done_reason="aborted")] * 3)

    with pytest.raises(ProviderError) as caught:
        await collect(resilient_stream(provider, make_request(MODEL), RETRYING))

    assert len(replicate_fake.predictions) == 1
    assert (type(caught.value), caught.value.message) == (
        ProviderCancelledError,
        "prediction ended: aborted",
    )


async def test_a_prediction_that_failed_before_any_output_is_retried(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    # ``done`` with reason ``error`` and no error event: a failed run, retried like a 5xx.
    replicate_fake.script(Scenario(tokens=[], done_reason="error"), Scenario(tokens=["ok"]))

    chunks = await collect(resilient_stream(provider, make_request(MODEL), RETRYING))

    assert chunks == ["ok"]
    assert len(replicate_fake.predictions) == 2


async def test_a_redirect_is_not_followed(
    provider: ReplicateProvider, replicate_fake: ReplicateFake, elsewhere: RecordingServer
) -> None:
    target = f"{elsewhere.base_url}/v1/models/{MODEL}/predictions"
    replicate_fake.script(*[Scenario(redirect_to=target)] * 3)

    with pytest.raises(ProviderError) as caught:
        await collect(resilient_stream(provider, make_request(MODEL), RETRYING))

    assert [r.headers.get("authorization") for r in elsewhere.requests] == []
    assert (type(caught.value), caught.value.message, caught.value.status) == (
        ProviderProtocolError,
        "upstream answered with a redirect (HTTP 307), which is not followed",
        307,
    )
    assert len(replicate_fake.requests_to("/v1/models/")) == 1


async def test_stream_without_done_is_truncated_and_cancelled(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    replicate_fake.script(Scenario(truncate_after=2))

    with pytest.raises(ProviderTruncatedError):
        await collect(provider.stream(make_request(MODEL)))

    assert [pid for pid, _ in replicate_fake.cancels] == [create_id(replicate_fake)]


async def test_dropped_connection(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    replicate_fake.script(Scenario(drop_after=3))
    chunks: list[str] = []

    with pytest.raises(ProviderUpstreamError) as caught:
        async for chunk in provider.stream(make_request(MODEL)):
            chunks.append(chunk)

    assert chunks == ["Hello", ",", " world"]
    assert caught.value.message == "connection to upstream lost"
    assert len(replicate_fake.cancels) == 1


async def test_cancelling_the_consumer_closes_the_stream_and_cancels_the_prediction(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    replicate_fake.script(Scenario(tokens=[f"t{i} " for i in range(500)], gap=0.05))

    seen, cancelled_at = await cancel_after(provider.stream(make_request(MODEL)), 3)

    assert seen == ["t0 ", "t1 ", "t2 "]
    await wait_until(lambda: replicate_fake.disconnects and replicate_fake.cancels)
    assert replicate_fake.disconnects[0] - cancelled_at < 0.1
    (prediction_id, cancel_at) = replicate_fake.cancels[0]
    assert prediction_id == create_id(replicate_fake)
    assert cancel_at - cancelled_at < 0.1


async def test_closing_the_stream_early_cancels_the_prediction(
    provider: ReplicateProvider, replicate_fake: ReplicateFake
) -> None:
    replicate_fake.script(Scenario(tokens=[f"t{i} " for i in range(500)], gap=0.05))
    stream = provider.stream(make_request(MODEL))

    assert await anext(stream) == "t0 "
    await stream.aclose()  # type: ignore[attr-defined]

    assert len(replicate_fake.cancels) == 1
    assert replicate_fake.disconnects


async def test_missing_token_fails_before_any_request(replicate_fake: ReplicateFake) -> None:
    env = ProviderEnv(environ={}, settings={"base_url": replicate_fake.base_url})
    provider = ReplicateProvider(env)

    with pytest.raises(ProviderAuthError) as caught:
        await collect(provider.stream(make_request(MODEL)))

    assert caught.value.message == "environment variable REPLICATE_API_TOKEN is not set"
    assert replicate_fake.requests == []


def test_model_must_name_owner_and_model() -> None:
    provider = ReplicateProvider(ProviderEnv(environ={}, settings={}))

    assert provider.check_model(MODEL) is None
    assert provider.check_model(f"{MODEL}:{VERSION}") is None
    assert provider.check_model("llama3") is not None


@pytest.mark.parametrize(
    "options", [{"temperature": 6}, {"top_p": 2}, {"stop": ["a,b"]}, {"top_k": 50}, {"seed": 3}]
)
def test_unsupported_or_out_of_range_options_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        ReplicateProvider.Options.model_validate(options)


def create_id(fake: ReplicateFake) -> str:
    (prediction_id,) = fake.predictions
    return prediction_id
