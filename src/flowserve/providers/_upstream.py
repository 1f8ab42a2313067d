"""What the cloud adapters share at their boundary with an upstream API.

Each adapter names its clients' exceptions by what they mean (an error status, a timeout, a
broken connection, an error event, a body that does not parse) and hands them to
:func:`map_errors`, which turns them into flowserve errors; only the exception types, and how
to read an SDK's status error, stay in the adapter. The rest lives here: which flowserve error
an HTTP status means (:data:`STATUS_ERRORS`), how long a ``Retry-After`` asks us to wait,
which transport exceptions mean "the connection broke", and how an upstream message is made
safe to show (no key, no newlines, bounded length).

Two rules every adapter keeps, because an answer that breaks them cannot carry a stream:

* Redirects are never followed (each adapter's HTTP client is told so): a flow's
  ``base_url`` is checked against the allowed hosts, its redirect target is not, and a
  followed redirect takes the key along (httpx strips ``Authorization`` across origins, but
  not ``x-api-key``). A 3xx is :func:`redirected`, final.
* A 2xx is read as a stream only when it says ``text/event-stream`` (or says nothing: some
  small servers send no content type). Anything else is :func:`not_a_stream`: a JSON error
  body, as some servers and proxies send under a 200, becomes the error it describes; any
  other body is named by its content type. One header look-up per request, nothing per chunk.
"""

from __future__ import annotations

import email.utils
import importlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Any

import orjson

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

CONNECTION_LOST = "connection to upstream lost"
CONNECT_FAILED = "could not connect to upstream"
TRUNCATED = "upstream stream ended before the response was complete"
TIMED_OUT = "upstream timed out"
MALFORMED = "upstream sent malformed data"
MAX_ERROR_BODY = 64 * 1024  # an error body is read this far, no further

# What the ``code`` and ``type`` fields of an error object say, where they say it clearly
# (OpenAI's names; Anthropic's types, which proxies pass on). ``code`` is looked at first:
# OpenAI's bad key is ``type: invalid_request_error`` with ``code: invalid_api_key``.
_ERROR_CODES: dict[str, type[ProviderError]] = {
    "invalid_api_key": ProviderAuthError,
    "model_not_found": ProviderBadRequestError,
    "rate_limit_exceeded": ProviderRateLimitError,
    "server_is_overloaded": ProviderOverloadedError,
}
_ERROR_TYPES: dict[str, type[ProviderError]] = {
    "invalid_request_error": ProviderBadRequestError,
    "not_found_error": ProviderBadRequestError,
    "authentication_error": ProviderAuthError,
    "permission_error": ProviderAuthError,
    "rate_limit_error": ProviderRateLimitError,
    "rate_limit_exceeded": ProviderRateLimitError,
    "overloaded_error": ProviderOverloadedError,
    "service_unavailable_error": ProviderOverloadedError,
}
# An upstream HTTP error status → the flowserve error. A status not listed goes by its
# class: 3xx ProviderProtocolError (never followed), other 4xx ProviderBadRequestError, other
# 5xx (and anything stranger) ProviderUpstreamError, which is retried.
STATUS_ERRORS: dict[int, type[ProviderError]] = {
    401: ProviderAuthError,
    403: ProviderAuthError,
    408: ProviderUpstreamError,  # the upstream tired of waiting for the request: try again
    429: ProviderRateLimitError,
    503: ProviderOverloadedError,
    529: ProviderOverloadedError,  # Anthropic's "overloaded"
}
_EVENT_STREAM = "text/event-stream"

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
    """The flowserve error class for an upstream HTTP error status (:data:`STATUS_ERRORS`)."""
    cls = STATUS_ERRORS.get(status)
    if cls is not None:
        return cls
    if 300 <= status < 400:
        return ProviderProtocolError
    if 400 <= status < 500:
        return ProviderBadRequestError
    return ProviderUpstreamError


def status_error(
    status: int,
    detail: str | None,
    *,
    provider: str,
    secret: str | None,
    retry_after: float | None,
) -> ProviderError:
    """The error for an upstream's HTTP error status: :func:`redirected` for a 3xx, else
    :func:`error_for_status`'s class with the upstream's own message (``detail``, cleaned)."""
    if 300 <= status < 400:
        return redirected(status, provider)
    message = clean_message(detail or f"upstream returned HTTP {status}", secret)
    return error_for_status(status)(
        message, provider=provider, status=status, retry_after=retry_after
    )


Kinds = tuple[type[Exception], ...]


@contextmanager
def map_errors(
    provider: str,
    *,
    status: Kinds = (),
    read_status: Callable[[Any], ProviderError] | None = None,
    connect_failed: Kinds = (),
    timeout: Kinds = (),
    connection: Kinds = (),
    lost: Kinds = (),
    event: Kinds = (),
    event_message: Callable[[Any], str] = str,
    malformed: Kinds = (),
) -> Iterator[dict[str, bool]]:
    """An adapter's boundary: its clients' exceptions, named by kind, become flowserve errors
    (by type, never by message). The kinds are tried in this order, so an SDK's base class
    (the openai SDK's ``APIError`` as an error event) may follow its subclasses:

    ``status``          an HTTP error status: ``read_status(exc)`` (see :func:`status_error`)
    ``connect_failed``  no connection was made: ``CONNECT_FAILED``
    ``timeout``         :class:`ProviderTimeoutError`
    ``connection``      the connection broke: ``CONNECTION_LOST`` once ``state["connected"]``
                        (the adapter sets it when the stream has begun), else ``CONNECT_FAILED``
    ``lost``            raised only while a stream is read: ``CONNECTION_LOST``
    ``event``           an error event inside a 200 stream: ``event_message(exc)``
    ``malformed``       a body that does not parse: ``MALFORMED``

    Every one but ``status`` becomes a :class:`ProviderUpstreamError` (retried) or, for
    ``timeout``, a :class:`ProviderTimeoutError`. A :class:`ProviderError` passes untouched;
    anything else propagates, to be reported as the bug it is.
    """
    state = {"connected": False}
    try:
        yield state
    except ProviderError:
        raise
    except status as exc:
        assert read_status is not None, "status exceptions need read_status"
        raise read_status(exc) from exc
    except connect_failed as exc:
        raise ProviderUpstreamError(CONNECT_FAILED, provider=provider) from exc
    except timeout as exc:
        raise ProviderTimeoutError(TIMED_OUT, provider=provider) from exc
    except connection as exc:
        message = CONNECTION_LOST if state["connected"] else CONNECT_FAILED
        raise ProviderUpstreamError(message, provider=provider) from exc
    except lost as exc:
        raise ProviderUpstreamError(CONNECTION_LOST, provider=provider) from exc
    except event as exc:
        raise ProviderUpstreamError(event_message(exc), provider=provider) from exc
    except malformed as exc:
        raise ProviderUpstreamError(MALFORMED, provider=provider) from exc


def redirected(status: int, provider: str) -> ProviderProtocolError:
    """The error for a 3xx answer: redirects are never followed (see the module docstring).
    The ``Location`` is left out of the message: it may carry a signed query string."""
    return ProviderProtocolError(
        f"upstream answered with a redirect (HTTP {status}), which is not followed",
        provider=provider,
        status=status,
    )


def is_event_stream(content_type: str | None) -> bool:
    """Whether a 2xx answer's ``Content-Type`` lets it be read as server-sent events. A
    missing one does: some small servers stream without naming what they send."""
    return content_type is None or content_type[:17].lower() == _EVENT_STREAM


async def read_capped(body: AsyncIterator[bytes]) -> bytes:
    """An error body, read as far as :data:`MAX_ERROR_BODY` and no further."""
    data = b""
    async for chunk in body:
        data += chunk
        if len(data) >= MAX_ERROR_BODY:
            break
    return data


async def require_event_stream(
    status: int,
    headers: Mapping[str, str],
    body: Callable[[], AsyncIterator[bytes]],
    provider: str,
    secret: str | None = None,
) -> None:
    """Raise :func:`not_a_stream`'s error unless a 2xx answer may be read as an event stream;
    ``body`` is called only then. One header look-up per response, nothing per chunk."""
    content_type = headers.get("content-type")
    if not is_event_stream(content_type):
        raise await not_a_stream(status, content_type, body(), headers, provider, secret)


async def not_a_stream(
    status: int,
    content_type: str | None,
    body: AsyncIterator[bytes],
    headers: Mapping[str, str],
    provider: str,
    secret: str | None = None,
) -> ProviderError:
    """The error for a 2xx answer that is not an event stream (:func:`is_event_stream`): the
    error its JSON body carries, if it carries one, classified by the error object's ``code``
    and ``type`` (never by its words); otherwise one that names the content type."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if "json" in media_type:
        error = error_object(await read_capped(body))
        if error is not None:
            message = error.get("message")
            return error_for_fields(error)(
                clean_message(message if isinstance(message, str) and message else "", secret)
                or f"upstream answered HTTP {status} with an error",
                provider=provider,
                status=status,
                retry_after=retry_after(headers),
            )
    return ProviderProtocolError(
        f"upstream answered HTTP {status} with content type "
        f"{clean_message(media_type) or 'none'}, not an event stream",
        provider=provider,
        status=status,
    )


def error_for_fields(error: Mapping[str, Any]) -> type[ProviderError]:
    """The flowserve error class for an error object by what its ``code`` and ``type`` say:
    a known name, or an integer ``code`` that is an HTTP error status (vLLM, llama.cpp).
    Neither says anything clear: :class:`ProviderUpstreamError`, as for an error event in a
    stream."""
    code, kind = error.get("code"), error.get("type")
    if isinstance(code, str) and code in _ERROR_CODES:
        return _ERROR_CODES[code]
    if type(code) is int and 400 <= code < 600:
        return error_for_status(code)
    if isinstance(kind, str) and kind in _ERROR_TYPES:
        return _ERROR_TYPES[kind]
    return ProviderUpstreamError


def error_object(body: bytes, flat: bool = False) -> dict[str, Any] | None:
    """The error object of a JSON body that is an error: ``{"error": {…}}`` (OpenAI, vLLM,
    llama.cpp), ``{"error": "…"}`` (Ollama), the flat ``{"object": "error", …}`` of older
    vLLM. ``None`` for anything else, such as a whole completion. With ``flat`` (the body of
    an error status, which can only be an error) any other object is taken as flat too."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str) and error:
        return {"message": error}
    if flat or data.get("object") == "error":
        return data
    return None


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
