"""Retries and time limits around any provider's stream.

The adapters turn off their SDKs' retries because only this layer knows whether a token has
reached the user: before the first token a retryable failure (``retryable = True`` on the
error class: rate limits, overload, upstream 5xx and dropped connections) is retried, at most
``max_retries`` times, waiting ``retry_after`` when the upstream said so (capped) and an
exponential back-off otherwise; after the first token nothing is retried, because the user
would see the text twice.

Time limits: the first token must arrive within ``ttft_timeout`` of the call (retries and
their waits included), enforced here by a cancel scope around the wait for the first chunk
only. The whole stream must finish within ``total_timeout``, enforced by the *consumer*, one
timeout around its whole loop, raising :func:`stream_timeout`. Neither is a scope around a
``yield`` (a cancel scope left open while an async generator is suspended fires inside the
consumer's code, PEP 789), and nothing is paid per chunk: once the first chunk is in, chunks
pass straight through.

The provider's iterator is always closed (``aclose``), shielded from cancellation, when this
generator finishes, fails, is closed or is cancelled; that is what stops upstream generation.
Nothing here names a provider.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

from flowserve.errors import ProviderError, ProviderTimeoutError
from flowserve.providers.base import LLMRequest, Provider

logger = logging.getLogger(__name__)

_CLOSE_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    ttft_timeout: float = 60.0  # seconds until the first token, retries included
    total_timeout: float = 600.0  # seconds until the stream ends
    max_retry_after: float = 30.0  # longest upstream-requested wait we honour
    base_backoff: float = 0.5  # first back-off without retry_after; doubles each retry


async def resilient_stream(
    provider: Provider, request: LLMRequest, policy: RetryPolicy
) -> AsyncIterator[str]:
    start = anyio.current_time()
    first_deadline = start + policy.ttft_timeout
    total_deadline = start + policy.total_timeout
    name = getattr(provider, "name", None)
    attempt = 0
    while True:
        request.usage.prompt_tokens = request.usage.completion_tokens = None
        chunks = provider.stream(request)
        try:
            try:
                first = await _next(chunks, min(first_deadline, total_deadline))
            except _Expired:
                first_token = first_deadline <= total_deadline
                raise _timeout(policy, first_token=first_token, provider=name) from None
            except ProviderError as exc:
                delay = _retry_delay(exc, attempt, policy)
                if delay is None or anyio.current_time() + delay >= first_deadline:
                    raise
                attempt += 1
                logger.info(
                    "retrying %s after %s (attempt %d of %d, in %.2fs)",
                    name,
                    type(exc).__name__,
                    attempt,
                    policy.max_retries,
                    delay,
                )
                await anyio.sleep(delay)
                continue
            if first is None:
                return
            yield first
            async for chunk in chunks:
                yield chunk
            return
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with anyio.move_on_after(_CLOSE_GRACE, shield=True):
                    await aclose()


def stream_timeout(policy: RetryPolicy, provider: str | None) -> ProviderTimeoutError:
    """The error for a stream that outlived ``total_timeout``, raised by the consumer that
    enforces it (one ``asyncio.timeout`` around its whole loop, in its own frame)."""
    return _timeout(policy, first_token=False, provider=provider)


class _Expired(Exception):
    """A deadline passed while waiting for the provider."""


async def _next(chunks: AsyncIterator[str], deadline: float) -> str | None:
    """The next chunk, ``None`` at the end, or ``_Expired`` once ``deadline`` passes."""
    with anyio.CancelScope(deadline=deadline) as scope:
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return None
        except Exception as exc:
            if scope.cancel_called:  # an adapter turned our cancellation into an error
                raise _Expired from exc
            raise
    raise _Expired


def _retry_delay(exc: ProviderError, attempt: int, policy: RetryPolicy) -> float | None:
    if not exc.retryable or attempt >= policy.max_retries:
        return None
    if exc.retry_after is not None and math.isfinite(exc.retry_after):
        return min(max(exc.retry_after, 0.0), policy.max_retry_after)
    return float(policy.base_backoff * 2**attempt)


def _timeout(
    policy: RetryPolicy, *, first_token: bool, provider: str | None
) -> ProviderTimeoutError:
    if first_token:
        message = f"no first token within {policy.ttft_timeout:g}s"
    else:
        message = f"stream did not complete within {policy.total_timeout:g}s"
    return ProviderTimeoutError(message, provider=provider)
