"""Small helpers shared by tests."""

from __future__ import annotations

import os
import textwrap

import pytest

from flowserve.errors import FlowValidationError
from flowserve.flows import Flow, compile_flow, parse_flow_text
from flowserve.providers.base import ProviderEnv
from flowserve.providers.registry import ProviderRegistry


def registry(environ: dict[str, str] | None = None) -> ProviderRegistry:
    env = ProviderEnv(environ=dict(os.environ) if environ is None else environ, settings={})
    return ProviderRegistry.from_entry_points(env, test_providers=True)


def flow(text: str, environ: dict[str, str] | None = None) -> Flow:
    return compile_flow(parse_flow_text(textwrap.dedent(text)), registry(environ))


def problems(text: str) -> list[tuple[str, str]]:
    """The (location, message) pairs a flow file is refused with."""
    with pytest.raises(FlowValidationError) as info:
        flow(text)
    return info.value.problems
