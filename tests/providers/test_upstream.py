"""What the cloud adapters share at their boundary (``providers/_upstream.py``): one table from
HTTP status to flowserve error, which every adapter follows alike through its own SDK, and one
context manager that turns each adapter's exceptions, named by kind, into flowserve errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractContextManager

import pytest
from tests.fakes import FakeServer, Scenario
from tests.fakes.anthropic_wire import DEFAULT_KEY as ANTHROPIC_KEY
from tests.fakes.openai_wire import DEFAULT_KEY as OPENAI_KEY
from tests.fakes.replicate_wire import DEFAULT_TOKEN as REPLICATE_TOKEN
from tests.providers._support import collect, make_request

from flowserve.errors import (
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderError,
    ProviderOverloadedError,
    ProviderProtocolError,
    ProviderRateLimitError,
    ProviderTimeoutError,
    ProviderUpstreamError,
)
from flowserve.providers import _upstream
from flowserve.providers.anthropic import AnthropicProvider
from flowserve.providers.base import Provider, ProviderEnv
from flowserve.providers.openai import OpenAIProvider
from flowserve.providers.openai_compatible import OpenAICompatibleProvider
from flowserve.providers.replicate import ReplicateProvider

pytestmark = pytest.mark.anyio

# What each error status meant to every adapter before the table was shared (the adapters
# agreed on every 4xx and 5xx: each called the same function).
STATUSES: dict[int, type[ProviderError]] = {
    400: ProviderBadRequestError,
    401: ProviderAuthError,
    403: ProviderAuthError,
    404: ProviderBadRequestError,
    408: ProviderUpstreamError,
    409: ProviderBadRequestError,
    413: ProviderBadRequestError,
    422: ProviderBadRequestError,
    429: ProviderRateLimitError,
    500: ProviderUpstreamError,
    502: ProviderUpstreamError,
    503: ProviderOverloadedError,
    504: ProviderUpstreamError,
    529: ProviderOverloadedError,
}
ADAPTERS = ["openai", "openai-compatible", "anthropic", "replicate"]


@pytest.mark.parametrize(("status", "expected"), STATUSES.items())
def test_each_error_status_means_one_error_class(
    status: int, expected: type[ProviderError]
) -> None:
    assert _upstream.error_for_status(status) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (301, ProviderProtocolError),
        (308, ProviderProtocolError),
        (402, ProviderBadRequestError),
        (418, ProviderBadRequestError),
        (499, ProviderBadRequestError),
        (501, ProviderUpstreamError),
        (507, ProviderUpstreamError),
        (599, ProviderUpstreamError),
        (600, ProviderUpstreamError),
    ],
)
def test_a_status_not_in_the_table_goes_by_its_class(
    status: int, expected: type[ProviderError]
) -> None:
    assert status not in _upstream.STATUS_ERRORS
    assert _upstream.error_for_status(status) is expected


def test_retryable_statuses_are_the_ones_a_retry_can_help() -> None:
    retried = sorted(s for s in STATUSES if _upstream.error_for_status(s).retryable)
    assert retried == [408, 429, 500, 502, 503, 504, 529]


def test_status_error_cleans_the_upstream_message_and_keeps_the_context() -> None:
    key = "sk-live-0123456789abcdef"
    error = _upstream.status_error(
        429, f"slow down,\n{key}", provider="p", secret=key, retry_after=1.5
    )
    assert type(error) is ProviderRateLimitError
    assert (error.message, error.provider, error.status, error.retry_after) == (
        "slow down, [redacted]",
        "p",
        429,
        1.5,
    )
    plain = _upstream.status_error(502, None, provider="p", secret=None, retry_after=None)
    assert (type(plain), plain.message) == (ProviderUpstreamError, "upstream returned HTTP 502")


def test_status_error_for_a_redirect_says_it_is_not_followed() -> None:
    error = _upstream.status_error(
        307, "moved to https://elsewhere/?sig=x", provider="p", secret=None, retry_after=3.0
    )
    assert (type(error), error.status, error.retry_after) == (ProviderProtocolError, 307, None)
    assert error.message == "upstream answered with a redirect (HTTP 307), which is not followed"


# --- every adapter, through its own SDK and wire fake --------------------------------------


@pytest.fixture(params=ADAPTERS)
async def adapter(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Provider, FakeServer, str]]:
    """An adapter pointed at its wire fake, the fake, and a model the adapter accepts."""
    provider: Provider
    if request.param == "anthropic":
        fake = request.getfixturevalue("anthropic_fake")
        env = ProviderEnv({"ANTHROPIC_API_KEY": ANTHROPIC_KEY}, {"base_url": fake.base_url})
        provider, model = AnthropicProvider(env), "claude-haiku-4-5"
    elif request.param == "replicate":
        fake = request.getfixturevalue("replicate_fake")
        env = ProviderEnv({"REPLICATE_API_TOKEN": REPLICATE_TOKEN}, {"base_url": fake.base_url})
        provider, model = ReplicateProvider(env), "meta/meta-llama-3-8b-instruct"
    elif request.param == "openai-compatible":
        fake = request.getfixturevalue("openai_fake")
        fake.configure("vllm", api_key=None)
        env = ProviderEnv({}, {"base_url": fake.v1})
        provider, model = OpenAICompatibleProvider(env), "llama-3.1-8b"
    else:
        fake = request.getfixturevalue("openai_fake")
        env = ProviderEnv({"OPENAI_API_KEY": OPENAI_KEY}, {"base_url": fake.v1})
        provider, model = OpenAIProvider(env), "gpt-4o-mini"
    yield provider, fake, model
    await provider.aclose()


@pytest.mark.parametrize(("status", "expected"), STATUSES.items())
async def test_every_adapter_maps_an_error_status_to_the_same_class(
    adapter: tuple[Provider, FakeServer, str], status: int, expected: type[ProviderError]
) -> None:
    provider, fake, model = adapter
    fake.script(Scenario(status=status, headers={"retry-after": "7"}))

    with pytest.raises(ProviderError) as caught:
        await collect(provider.stream(make_request(model)))

    error = caught.value
    assert type(error) is expected
    assert (error.provider, error.status, error.retry_after) == (provider.name, status, 7.0)


# --- map_errors -------------------------------------------------------------------------


class Status(Exception):
    pass


class Event(Exception):
    pass


class Broke(Exception):
    pass


def boundary() -> AbstractContextManager[dict[str, bool]]:
    """``map_errors`` for provider ``p``, with one exception class of each kind."""
    return _upstream.map_errors(
        "p",
        status=(Status,),
        read_status=lambda exc: ProviderBadRequestError(f"status {exc}", provider="p"),
        connect_failed=(ConnectionRefusedError,),
        timeout=(TimeoutError,),
        connection=(Broke,),
        lost=(ConnectionResetError,),
        event=(Event,),
        event_message=lambda exc: f"event {exc}",
        malformed=(ValueError,),
    )


@pytest.mark.parametrize(
    ("raised", "connected", "expected", "message"),
    [
        (Status("418"), False, ProviderBadRequestError, "status 418"),
        (ConnectionRefusedError(), True, ProviderUpstreamError, _upstream.CONNECT_FAILED),
        (TimeoutError(), False, ProviderTimeoutError, _upstream.TIMED_OUT),
        (Broke(), False, ProviderUpstreamError, _upstream.CONNECT_FAILED),
        (Broke(), True, ProviderUpstreamError, _upstream.CONNECTION_LOST),
        (ConnectionResetError(), False, ProviderUpstreamError, _upstream.CONNECTION_LOST),
        (Event("oops"), True, ProviderUpstreamError, "event oops"),
        (ValueError("not json"), True, ProviderUpstreamError, _upstream.MALFORMED),
    ],
)
def test_map_errors_turns_each_kind_into_its_error(
    raised: Exception, connected: bool, expected: type[ProviderError], message: str
) -> None:
    with pytest.raises(ProviderError) as caught, boundary() as state:
        state["connected"] = connected
        raise raised
    assert (type(caught.value), caught.value.message) == (expected, message)
    assert caught.value.provider == "p" and caught.value.__cause__ is raised


def test_map_errors_passes_flowserve_errors_and_unknown_exceptions_through() -> None:
    ours = ProviderOverloadedError("busy", provider="p")
    with pytest.raises(ProviderOverloadedError) as caught, boundary():
        raise ours
    assert caught.value is ours
    with pytest.raises(KeyError), boundary():
        raise KeyError("a bug, not an upstream's fault")
