"""Replicate language models, streamed through the official ``replicate`` SDK (1.0.x).

A Replicate call is two resources: a *prediction* created by a POST, and an SSE stream that
merely observes it. Closing the stream does not stop the prediction (which is billed while it
runs), so the adapter creates it with ``predictions.async_create(..., stream=True)`` to learn
its id, and POSTs the cancel whenever it stops reading before the ``done`` event: the consumer
was cancelled or went away, the stream broke, or it ended early. The cancel is shielded so it
is sent even while the surrounding task is being cancelled.

Models are ``owner/name`` (the model's latest version) or ``owner/name:version``.

Input mapping (Replicate inputs are per model; these are the names the official language
models use):

==============  ===================================================================
``prompt``      the conversation: a single user message is sent as it is; otherwise
                each turn becomes a ``User: …`` / ``Assistant: …`` line and the
                prompt ends with ``Assistant:``
``system_prompt``  the node's system prompt (omitted when there is none)
``max_tokens``  → ``max_new_tokens``
``temperature`` → ``temperature``
``top_p``       → ``top_p``
``stop``        → ``stop_sequences``, joined with commas (so a stop string may not
                contain a comma)
==============  ===================================================================

Other non-obvious points:

* The SDK turns an output token that starts with ``https:`` or ``data:`` into a ``FileOutput``;
  its ``url`` is the original text, which is what we yield.
* ``event: error`` reaches us as a bare ``RuntimeError`` carrying the event's JSON
  (``{"detail": …}``). A stream that ends without ``done`` raises
  :class:`ProviderTruncatedError`; a ``done`` whose reason is ``canceled`` (or one we do not
  know) raises :class:`ProviderCancelledError`, which is not retried (see ``_check_done``).
* Redirects are not followed: a 3xx answer to any of the client's requests is a final error
  (a response hook raises it; the SDK itself would try to read the empty body).
* Usage is not in the stream: after ``done`` the prediction is fetched once, and its
  ``metrics.input_token_count`` / ``output_token_count`` fill ``request.usage`` (best effort).
* ``ReplicateError`` does not keep the response headers, so a client event hook remembers
  ``retry-after`` of the last failed response in a context variable (per task, so
  concurrent streams do not mix).
* The SDK's transport retries GETs on 429/503/504 (never POSTs) and cannot be switched off;
  that only touches the stream GET of a prediction that already exists.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar, cast

import anyio
from pydantic import Field, ValidationError, field_validator

from flowserve.errors import (
    ProviderBadRequestError,
    ProviderCancelledError,
    ProviderError,
    ProviderTruncatedError,
    ProviderUpstreamError,
)
from flowserve.providers import _upstream
from flowserve.providers.base import LLMRequest, Message, NodeOptions, Provider, ProviderEnv

if TYPE_CHECKING:
    import httpx
    from replicate import Client
    from replicate.exceptions import ReplicateError

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.replicate.com"
_READ_TIMEOUT = 900.0
_CONNECT_TIMEOUT = 10.0
_CLOSE_GRACE = 2.0
_CANCEL_GRACE = 5.0
_USAGE_GRACE = 5.0
_MODEL = re.compile(r"^[\w.-]+/[\w.-]+(:[\w]+)?$")

_retry_after: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "flowserve_replicate_retry_after", default=None
)


class ReplicateOptions(NodeOptions):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=5)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: list[str] | None = Field(default=None, min_length=1)

    @field_validator("stop")
    @classmethod
    def _no_commas(cls, value: list[str] | None) -> list[str] | None:
        if value and any("," in item for item in value):
            raise ValueError("Replicate joins stop sequences with commas; one contains a comma")
        return value


class ReplicateProvider(Provider):
    name = "replicate"
    Options: ClassVar[type[NodeOptions]] = ReplicateOptions
    default_model = "meta/meta-llama-3-8b-instruct"
    default_key_env = "REPLICATE_API_TOKEN"

    def __init__(self, env: ProviderEnv) -> None:
        super().__init__(env)
        self._clients: dict[tuple[str, str], tuple[Client, httpx.AsyncHTTPTransport]] = {}

    def check_model(self, model: str) -> str | None:
        if not _MODEL.match(model):
            return f"model {model!r} must look like owner/name or owner/name:version"
        return None

    def _client(self, base_url: str, token: str) -> Client:
        entry = self._clients.get((base_url, token))
        if entry is None:
            import httpx
            import replicate

            # We own the transport so that aclose() can release its connections.
            transport = httpx.AsyncHTTPTransport()
            client = replicate.Client(
                api_token=token,
                base_url=base_url,
                timeout=httpx.Timeout(_READ_TIMEOUT, connect=_CONNECT_TIMEOUT),
                transport=transport,
                follow_redirects=False,  # httpx's default, said out loud
                event_hooks={"response": [_refuse_redirects, _remember_retry_after]},
            )
            entry = self._clients[(base_url, token)] = (client, transport)
        return entry[0]

    async def aclose(self) -> None:
        entries, self._clients = list(self._clients.values()), {}
        for _, transport in entries:
            await transport.aclose()

    def _create_params(self, request: LLMRequest) -> dict[str, Any]:
        try:
            options = ReplicateOptions.model_validate(request.options)
        except ValidationError as exc:
            raise ProviderBadRequestError(
                f"invalid options: {exc.errors()[0]['msg']}", provider=self.name
            ) from exc
        problem = self.check_model(request.model)
        if problem:
            raise ProviderBadRequestError(problem, provider=self.name)
        inputs: dict[str, Any] = {"prompt": render_prompt(request.messages)}
        if request.system:
            inputs["system_prompt"] = request.system
        if options.max_tokens is not None:
            inputs["max_new_tokens"] = options.max_tokens
        if options.temperature is not None:
            inputs["temperature"] = options.temperature
        if options.top_p is not None:
            inputs["top_p"] = options.top_p
        if options.stop:
            inputs["stop_sequences"] = ",".join(options.stop)
        model, _, version = request.model.partition(":")
        target = {"version": version} if version else {"model": model}
        return {**target, "input": inputs, "stream": True}

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        variable = self.key_env(request.api_key_env) or "REPLICATE_API_TOKEN"
        token = self.env.environ.get(variable)
        if not token:  # checked before any network call
            raise _upstream.missing_key(self.name, variable)
        base_url = request.base_url or self.env.settings.get("base_url") or DEFAULT_BASE_URL
        client = self._client(base_url, token)
        params = self._create_params(request)
        _retry_after.set(None)
        prediction = None
        done = False
        try:
            with self._map_errors(token) as state:
                prediction = await client.predictions.async_create(**params)
                events = cast(AsyncGenerator[Any, None], prediction.async_stream())
                state["connected"] = True
                try:
                    async for event in events:
                        kind = getattr(event.event, "value", event.event)
                        if kind == "output":
                            text = _text(event.data)
                            if text:
                                yield text
                        elif kind == "done":
                            done = True
                            _check_done(event.data, self.name)
                            break
                finally:
                    with anyio.move_on_after(_CLOSE_GRACE, shield=True):
                        await events.aclose()
            if not done:
                raise ProviderTruncatedError(_upstream.TRUNCATED, provider=self.name)
            await _record_usage(prediction, request)
        finally:
            if prediction is not None and not done:
                await self._cancel(client, prediction.id)

    async def _cancel(self, client: Client, prediction_id: str) -> None:
        with anyio.move_on_after(_CANCEL_GRACE, shield=True) as scope:
            try:
                await client.predictions.async_cancel(prediction_id)
            except Exception as exc:  # the stream's own outcome matters more
                logger.warning("could not cancel prediction %s: %s", prediction_id, type(exc))
        if scope.cancelled_caught:
            logger.warning("cancelling prediction %s timed out", prediction_id)

    def _map_errors(self, token: str) -> AbstractContextManager[dict[str, bool]]:
        """The SDK's and httpx's exceptions, by kind (:func:`_upstream.map_errors`)."""
        import httpx
        from replicate.exceptions import ReplicateError

        return _upstream.map_errors(
            self.name,
            status=(ReplicateError,),
            read_status=lambda exc: self._status_error(exc, token),
            timeout=(httpx.TimeoutException,),
            connection=(httpx.TransportError,),
            # ``event: error`` in the stream; the SDK raises RuntimeError(<event data>).
            event=(RuntimeError,),
            event_message=lambda exc: _event_detail(str(exc), token),
            # An unknown SSE event name, a stream that is not text/event-stream, or a
            # prediction the SDK cannot parse.
            malformed=(ValueError,),
        )

    def _status_error(self, exc: ReplicateError, token: str) -> ProviderError:
        status = exc.status
        if status is None:  # raised by the SDK itself, e.g. "Model does not support streaming"
            detail = exc.detail or exc.title or exc.type or "request refused"
            return ProviderBadRequestError(
                _upstream.clean_message(detail, token), provider=self.name
            )
        return _upstream.status_error(  # a 3xx never gets here: _refuse_redirects
            status,
            exc.detail or exc.title,
            provider=self.name,
            secret=token,
            retry_after=_retry_after.get(),
        )


def render_prompt(messages: list[Message]) -> str:
    """The conversation as one prompt string (see the module docstring)."""
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    lines = [f"{'Assistant' if m.role == 'assistant' else 'User'}: {m.content}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


async def _refuse_redirects(response: httpx.Response) -> None:
    # The SDK raises only for 4xx/5xx and would parse a 3xx's empty body as a prediction
    # ("malformed data", retried: a new prediction each time).
    if 300 <= response.status_code < 400:
        raise _upstream.redirected(response.status_code, ReplicateProvider.name)


async def _remember_retry_after(response: httpx.Response) -> None:
    if response.status_code >= 400:
        _retry_after.set(_upstream.retry_after(response.headers))


def _text(data: Any) -> str:
    if isinstance(data, str):
        return data
    url = getattr(data, "url", None)  # FileOutput: the token looked like a URL
    return url if isinstance(url, str) else str(data)


def _check_done(data: Any, provider: str) -> None:
    """``done`` ends every prediction; a ``reason`` says it did not succeed. ``canceled`` is
    final, and so is a reason we do not know: retrying would start (and bill) the work again.
    ``error`` (a failed run whose ``error`` event did not come first) is retried before the
    first token, like the error event and an upstream 5xx."""
    try:
        reason = json.loads(data).get("reason") if data else None
    except (ValueError, AttributeError):
        reason = None
    if not reason:
        return
    if reason == "canceled":
        raise ProviderCancelledError("prediction was canceled upstream", provider=provider)
    if reason == "error":
        raise ProviderUpstreamError("prediction failed upstream", provider=provider)
    reason = _upstream.clean_message(reason)
    raise ProviderCancelledError(f"prediction ended: {reason}", provider=provider)


def _event_detail(data: str, token: str) -> str:
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    return _upstream.clean_message(detail if isinstance(detail, str) and detail else data, token)


async def _record_usage(prediction: Any, request: LLMRequest) -> None:
    with anyio.move_on_after(_USAGE_GRACE):
        try:
            await prediction.async_reload()
        except Exception:  # usage is best effort; the text is already delivered
            logger.debug("could not read usage of prediction %s", prediction.id, exc_info=True)
            return
    metrics = getattr(prediction, "metrics", None) or {}
    if isinstance(metrics.get("input_token_count"), int):
        request.usage.prompt_tokens = metrics["input_token_count"]
    if isinstance(metrics.get("output_token_count"), int):
        request.usage.completion_tokens = metrics["output_token_count"]
