"""What the cloud adapters share at their boundary with an upstream API.

Each adapter maps its SDK's exceptions in one ``_map_errors()`` context manager; the pieces
they have in common live here: which flowserve error an HTTP status means, how long a
``Retry-After`` asks us to wait, which transport exceptions mean "the connection broke", and
how an upstream message is made safe to show (no key, no newlines, bounded length).
"""

from __future__ import annotations

import email.utils
import importlib
import re
import time
from collections.abc import Mapping
from functools import cache

from flowserve.errors import (
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderError,
    ProviderOverloadedError,
    ProviderRateLimitError,
    ProviderUpstreamError,
)

CONNECTION_LOST = "connection to upstream lost"
CONNECT_FAILED = "could not connect to upstream"
TRUNCATED = "upstream stream ended before the response was complete"

_MAX_MESSAGE = 300
# Things that look like credentials: OpenAI/Anthropic style ``sk-…``/``sk-ant-…`` keys (also
# the partially masked ``sk-ab***yz`` form upstreams echo back), Replicate ``r8_…`` tokens,
# and anything after ``Bearer``.
_KEYLIKE = re.compile(r"\b(?:sk|rk|pk|r8)[-_][A-Za-z0-9_\-*.]{4,}|\bBearer\s+\S+", re.IGNORECASE)


def clean_message(text: object, secret: str | None = None) -> str:
    """One line of upstream text with the key (and anything key-shaped) redacted."""
    message = str(text)
    if secret:
        message = message.replace(secret, "[redacted]")
    message = _KEYLIKE.sub("[redacted]", message)
    message = " ".join(message.split())
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    return message


def error_for_status(status: int) -> type[ProviderError]:
    """The flowserve error class for an upstream HTTP error status."""
    if status in (401, 403):
        return ProviderAuthError
    if status == 429:
        return ProviderRateLimitError
    if status in (503, 529):
        return ProviderOverloadedError
    if status >= 500 or status == 408:
        return ProviderUpstreamError
    if status >= 400:
        return ProviderBadRequestError
    return ProviderUpstreamError


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the upstream asked us to wait: ``retry-after-ms``, then ``retry-after``
    (seconds or an HTTP date). ``None`` when absent or unparseable."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


@cache
def transport_errors() -> tuple[type[Exception], ...]:
    """Transport exception bases of whichever HTTP clients are installed (``httpx`` for
    replicate, anthropic<1 and openai<3; ``httpx2`` for openai>=3). Most SDK versions do not
    wrap errors raised while a stream is being read, so a dropped connection surfaces as one
    of these."""
    found: list[type[Exception]] = []
    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found.append(module.TransportError)
    return tuple(found)


@cache
def timeout_errors() -> tuple[type[Exception], ...]:
    found: list[type[Exception]] = []
    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found.append(module.TimeoutException)
    return tuple(found)


def missing_key(provider: str, variable: str) -> ProviderAuthError:
    return ProviderAuthError(f"environment variable {variable} is not set", provider=provider)
