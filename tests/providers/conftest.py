"""Fixtures for the provider tests: one fake server per wire format, reset for each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.fakes import AnthropicFake, OpenAIFake, RecordingServer, ReplicateFake, serve


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def _openai_server() -> Iterator[OpenAIFake]:
    with serve(OpenAIFake()) as fake:
        yield fake


@pytest.fixture(scope="session")
def _anthropic_server() -> Iterator[AnthropicFake]:
    with serve(AnthropicFake()) as fake:
        yield fake


@pytest.fixture(scope="session")
def _replicate_server() -> Iterator[ReplicateFake]:
    with serve(ReplicateFake()) as fake:
        yield fake


@pytest.fixture(scope="session")
def _elsewhere_server() -> Iterator[RecordingServer]:
    with serve(RecordingServer()) as server:
        yield server


@pytest.fixture
def openai_fake(_openai_server: OpenAIFake) -> Iterator[OpenAIFake]:
    _openai_server.reset()
    yield _openai_server
    assert not _openai_server.errors


@pytest.fixture
def anthropic_fake(_anthropic_server: AnthropicFake) -> Iterator[AnthropicFake]:
    _anthropic_server.reset()
    yield _anthropic_server
    assert not _anthropic_server.errors


@pytest.fixture
def replicate_fake(_replicate_server: ReplicateFake) -> Iterator[ReplicateFake]:
    _replicate_server.reset()
    yield _replicate_server
    assert not _replicate_server.errors


@pytest.fixture
def elsewhere(_elsewhere_server: RecordingServer) -> Iterator[RecordingServer]:
    """A second listener on 127.0.0.1, where the redirect tests point: nothing may reach it."""
    _elsewhere_server.reset()
    yield _elsewhere_server
    assert not _elsewhere_server.errors
