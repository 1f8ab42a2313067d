"""The openai-compatible adapter against the vLLM, llama.cpp and Ollama flavours of the fake."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
import pytest
from tests.fakes import OpenAIFake, RecordingServer, Scenario
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
from flowserve.providers.base import ProviderEnv
from flowserve.providers.openai_compatible import OpenAICompatibleProvider
from flowserve.providers.resilience import RetryPolicy, resilient_stream

pytestmark = pytest.mark.anyio

FLAVORS = ["vllm", "llamacpp", "ollama"]
RETRYING = RetryPolicy(max_retries=2, base_backoff=0.01)  # the real retry layer, fast
MODEL_NOT_FOUND = {  # what OpenAI says, passed on by a proxy under a 200
    "error": {
        "message": "The model `gpt-5x` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
}


def compatible(fake: OpenAIFake, environ: dict[str, str] | None = None, **settings: str):
    settings.setdefault("base_url", fake.v1)
    return OpenAICompatibleProvider(ProviderEnv(environ=environ or {}, settings=settings))


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_streams_text_and_usage(openai_fake: OpenAIFake, flavor: str) -> None:
    openai_fake.configure(flavor, api_key=None)
    openai_fake.script(Scenario(tokens=["Hi", " there", "."], prompt_tokens=5))
    provider = compatible(openai_fake)
    request = make_request("llama-3.1-8b", options={"max_tokens": 20})
    try:
        chunks = await collect(provider.stream(request))
    finally:
        await provider.aclose()

    assert chunks == ["Hi", " there", "."]
    assert request.usage.as_dict() == {"prompt_tokens": 5, "completion_tokens": 3}
    (sent,) = openai_fake.requests
    assert sent.headers["authorization"] == "Bearer not-needed"
    assert sent.body["max_tokens"] == 20  # compatible servers get the classic name


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_multibyte_characters_split_across_writes(
    openai_fake: OpenAIFake, flavor: str
) -> None:
    openai_fake.configure(flavor, api_key=None)
    openai_fake.script(Scenario(tokens=MULTIBYTE, split_utf8=True))
    provider = compatible(openai_fake)
    try:
        chunks = await collect(provider.stream(make_request("m")))
    finally:
        await provider.aclose()

    assert "".join(chunks) == "héllo 日本語 🎉"


async def test_usage_chunk_without_done_marker_is_complete(openai_fake: OpenAIFake) -> None:
    openai_fake.configure("ollama", api_key=None)
    openai_fake.script(Scenario(tokens=["a", "b"], end_marker=False))
    provider = compatible(openai_fake)
    request = make_request("llama3.2")
    try:
        assert await collect(provider.stream(request)) == ["a", "b"]
    finally:
        await provider.aclose()
    assert request.usage.completion_tokens == 2


@pytest.mark.parametrize("flavor", ["vllm", "llamacpp"])
async def test_integer_error_codes(openai_fake: OpenAIFake, flavor: str) -> None:
    openai_fake.configure(flavor, api_key=None)
    openai_fake.script(Scenario(status=400))
    provider = compatible(openai_fake)
    try:
        with pytest.raises(ProviderBadRequestError) as caught:
            await collect(provider.stream(make_request("m")))
    finally:
        await provider.aclose()

    assert (caught.value.status, caught.value.provider) == (400, "openai-compatible")
    assert caught.value.message == "Invalid value for 'temperature'."


async def test_flat_error_body_of_old_vllm(openai_fake: OpenAIFake) -> None:
    openai_fake.configure("vllm", api_key=None)
    flat = {
        "object": "error",
        "message": "context too long",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    openai_fake.script(Scenario(status=400, body=flat))
    provider = compatible(openai_fake)
    try:
        with pytest.raises(ProviderBadRequestError, match="context too long"):
            await collect(provider.stream(make_request("m")))
    finally:
        await provider.aclose()


async def test_error_event_then_done_marker(openai_fake: OpenAIFake) -> None:
    openai_fake.configure("vllm", api_key=None)
    error = {
        "message": "KV cache exhausted",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
    openai_fake.script(Scenario(error_after=1, error_body=error))
    provider = compatible(openai_fake)
    try:
        with pytest.raises(ProviderUpstreamError, match="KV cache exhausted"):
            await collect(provider.stream(make_request("m")))
    finally:
        await provider.aclose()


async def test_done_marker_without_finish_reason_is_truncated(openai_fake: OpenAIFake) -> None:
    # What an unrecognised native Ollama error looks like: no finish_reason, stream ends.
    openai_fake.configure("ollama", api_key=None)
    openai_fake.script(Scenario(truncate_after=1))
    provider = compatible(openai_fake)
    try:
        with pytest.raises(ProviderTruncatedError):
            await collect(provider.stream(make_request("m")))
    finally:
        await provider.aclose()


async def test_dropped_connection(openai_fake: OpenAIFake) -> None:
    openai_fake.configure("llamacpp", api_key=None)
    openai_fake.script(Scenario(drop_after=1))
    provider = compatible(openai_fake)
    try:
        with pytest.raises(ProviderUpstreamError, match="connection to upstream lost"):
            await collect(provider.stream(make_request("m")))
    finally:
        await provider.aclose()


async def test_cancelling_the_consumer_closes_the_upstream(openai_fake: OpenAIFake) -> None:
    openai_fake.configure("vllm", api_key=None)
    openai_fake.script(Scenario(tokens=[f"t{i} " for i in range(500)], gap=0.05))
    provider = compatible(openai_fake)
    try:
        seen, cancelled_at = await cancel_after(provider.stream(make_request("m")), 2)
    finally:
        await provider.aclose()

    assert seen == ["t0 ", "t1 "]
    await wait_until(lambda: openai_fake.disconnects)
    assert openai_fake.disconnects[0] - cancelled_at < 0.1


async def test_key_from_named_variable(openai_fake: OpenAIFake) -> None:
    openai_fake.configure("vllm", api_key="vllm-secret")
    provider = compatible(openai_fake, {"VLLM_KEY": "vllm-secret"})
    try:
        assert await collect(provider.stream(make_request("m", api_key_env="VLLM_KEY")))
    finally:
        await provider.aclose()

    assert openai_fake.requests[0].headers["authorization"] == "Bearer vllm-secret"


async def test_key_variable_from_settings(openai_fake: OpenAIFake) -> None:
    openai_fake.configure("vllm", api_key="vllm-secret")
    provider = compatible(openai_fake, {"VLLM_KEY": "vllm-secret"}, api_key_env="VLLM_KEY")
    try:
        assert await collect(provider.stream(make_request("m")))
    finally:
        await provider.aclose()


async def test_named_variable_missing_fails_before_any_request(openai_fake: OpenAIFake) -> None:
    provider = compatible(openai_fake)

    with pytest.raises(ProviderAuthError, match="environment variable VLLM_KEY is not set"):
        await collect(provider.stream(make_request("m", api_key_env="VLLM_KEY")))

    assert openai_fake.requests == []
    assert provider.missing_credentials(None) is None
    assert provider.missing_credentials("VLLM_KEY") == "VLLM_KEY"


async def test_base_url_from_the_node(openai_fake: OpenAIFake) -> None:
    openai_fake.configure("ollama", api_key=None)
    provider = OpenAICompatibleProvider(ProviderEnv(environ={}, settings={}))
    try:
        assert await collect(provider.stream(make_request("m", base_url=openai_fake.v1)))
    finally:
        await provider.aclose()


async def test_base_url_is_required(openai_fake: OpenAIFake) -> None:
    provider = OpenAICompatibleProvider(ProviderEnv(environ={}, settings={}))

    with pytest.raises(ProviderBadRequestError, match="no base_url"):
        await collect(provider.stream(make_request("m")))

    assert openai_fake.requests == []


async def test_finished_streams_reuse_one_connection(openai_fake: OpenAIFake) -> None:
    openai_fake.configure("vllm", api_key=None)
    openai_fake.script(*[Scenario(tokens=["a", "b"]) for _ in range(3)])
    provider = compatible(openai_fake)
    try:
        for _ in range(3):
            assert await collect(provider.stream(make_request("m"))) == ["a", "b"]
    finally:
        await provider.aclose()

    peers = {r.peer for r in openai_fake.requests}
    assert len(openai_fake.requests) == 3 and len(peers) == 1, peers


async def test_a_cancelled_stream_does_not_leave_its_connection_for_the_next(
    openai_fake: OpenAIFake,
) -> None:
    openai_fake.configure("vllm", api_key=None)
    openai_fake.script(
        Scenario(tokens=[f"t{i} " for i in range(500)], gap=0.05), Scenario(tokens=["ok"])
    )
    provider = compatible(openai_fake)
    try:
        await cancel_after(provider.stream(make_request("m")), 2)
        # The cancelled response was mid-body: reusing its connection would read its tail.
        assert await collect(provider.stream(make_request("m"))) == ["ok"]
    finally:
        await provider.aclose()

    first, second = openai_fake.requests
    assert first.peer != second.peer


async def test_proxy_from_the_environment_unless_no_proxy(
    openai_fake: OpenAIFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    openai_fake.configure("vllm", api_key=None)
    # A proxy that refuses connections: a request sent through it fails to connect.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    provider = compatible(openai_fake)
    try:
        with pytest.raises(ProviderUpstreamError, match="could not connect"):
            await collect(provider.stream(make_request("m")))
        assert openai_fake.requests == []
    finally:
        await provider.aclose()

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    provider = compatible(openai_fake)
    try:
        assert await collect(provider.stream(make_request("m")))
    finally:
        await provider.aclose()
    assert len(openai_fake.requests) == 1


# -- answers that are not a stream, directly and through a proxy --


class Route:
    """How the provider reaches the fake: ``direct`` (its own HTTP/1.1 client) or ``proxied``
    (httpx, through the forward proxy ``HTTP_PROXY`` names). ``forwarded`` lists the request
    targets the proxy passed on, so a test can tell that the proxy was really used."""

    def __init__(self, name: str, forwarded: list[str] | None = None) -> None:
        self.name, self.forwarded = name, forwarded

    def check(self, fake: OpenAIFake) -> None:
        if self.forwarded is not None:
            assert len(self.forwarded) == len(fake.requests) > 0


@pytest.fixture(params=["direct", "proxied"])
async def route(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Route]:
    for name in ("HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    if request.param == "direct":
        yield Route("direct")
        return
    async with _forward_proxy() as (url, forwarded):
        monkeypatch.setenv("HTTP_PROXY", url)
        yield Route("proxied", forwarded)


async def test_json_error_answered_with_200_reaches_the_user_and_is_not_retried(
    openai_fake: OpenAIFake, route: Route
) -> None:
    openai_fake.configure("openai", api_key=None)
    openai_fake.script(*[Scenario(content_type="application/json", body=MODEL_NOT_FOUND)] * 3)
    provider = compatible(openai_fake)
    try:
        with pytest.raises(ProviderError) as caught:
            await collect(resilient_stream(provider, make_request("gpt-5x"), RETRYING))
    finally:
        await provider.aclose()

    assert (type(caught.value), caught.value.message, caught.value.status) == (
        ProviderBadRequestError,
        "The model `gpt-5x` does not exist or you do not have access to it.",
        200,
    )
    assert len(openai_fake.requests) == 1
    route.check(openai_fake)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (404, ProviderBadRequestError),
        (429, ProviderRateLimitError),
        (401, ProviderAuthError),
        (503, ProviderOverloadedError),
    ],
)
async def test_json_error_answered_with_200_by_its_integer_code(
    openai_fake: OpenAIFake, route: Route, code: int, expected: type[ProviderError]
) -> None:
    # vLLM and llama.cpp put the HTTP status they meant in ``code``.
    openai_fake.configure("vllm", api_key=None)
    body = openai_fake.error_body(code, "something is wrong", code=code)
    openai_fake.script(Scenario(content_type="application/json", body=body))
    provider = compatible(openai_fake)
    try:
        with pytest.raises(ProviderError) as caught:
            await collect(provider.stream(make_request("m")))
    finally:
        await provider.aclose()

    assert (type(caught.value), caught.value.message) == (expected, "something is wrong")
    route.check(openai_fake)


async def test_a_200_that_is_not_an_event_stream_names_its_content_type(
    openai_fake: OpenAIFake, route: Route
) -> None:
    openai_fake.configure("vllm", api_key=None)
    page = Scenario(content_type="text/html", body="<html><body>Sign in to continue</body></html>")
    openai_fake.script(page, page, page)
    provider = compatible(openai_fake)
    try:
        with pytest.raises(ProviderError) as caught:
            await collect(resilient_stream(provider, make_request("m"), RETRYING))
    finally:
        await provider.aclose()

    assert (type(caught.value), caught.value.message) == (
        ProviderProtocolError,
        "upstream answered HTTP 200 with content type text/html, not an event stream",
    )
    assert len(openai_fake.requests) == 1
    route.check(openai_fake)


async def test_a_redirect_is_not_followed(
    openai_fake: OpenAIFake, route: Route, elsewhere: RecordingServer
) -> None:
    openai_fake.configure("vllm", api_key="vllm-secret")
    openai_fake.script(*[Scenario(redirect_to=f"{elsewhere.base_url}/v1/chat/completions")] * 3)
    provider = compatible(openai_fake, {"VLLM_KEY": "vllm-secret"}, api_key_env="VLLM_KEY")
    try:
        with pytest.raises(ProviderError) as caught:
            await collect(resilient_stream(provider, make_request("m"), RETRYING))
    finally:
        await provider.aclose()

    assert [r.headers for r in elsewhere.requests] == []
    assert (type(caught.value), caught.value.message, caught.value.status) == (
        ProviderProtocolError,
        "upstream answered with a redirect (HTTP 307), which is not followed",
        307,
    )
    assert len(openai_fake.requests) == 1
    route.check(openai_fake)


@asynccontextmanager
async def _forward_proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """A plain-HTTP forward proxy on 127.0.0.1: one request per connection, passed on in
    origin form with ``Connection: close``, the answer piped back unchanged. Yields its URL
    and the list of request targets it forwarded."""
    forwarded: list[str] = []
    writers: list[asyncio.StreamWriter] = []

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ")
        forwarded.append(target)
        parts = urlsplit(target)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        kept = [
            line
            for line in lines
            if line and not line.lower().startswith(("connection:", "proxy-connection:"))
        ]
        upstream_reader, upstream_writer = await asyncio.open_connection(parts.hostname, parts.port)
        writers.append(upstream_writer)
        new_head = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close"])
        upstream_writer.write(new_head.encode("latin-1") + b"\r\n\r\n")
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", forwarded
    finally:
        for writer in writers:
            writer.close()
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


def _sse_body(tokens: list[str]) -> bytes:
    events = [{"choices": [{"index": 0, "delta": {"content": t}}]} for t in tokens]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


@asynccontextmanager
async def _raw_server(
    answer: Callable[[asyncio.StreamWriter], Awaitable[None]],
    host: str = "127.0.0.1",
    requests: list[bytes] | None = None,
) -> AsyncIterator[OpenAICompatibleProvider]:
    """A bare HTTP server on a socket (``answer`` writes whatever bytes the test wants), and
    a provider pointed at it."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while not writer.is_closing():
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                if requests is not None:
                    requests.append(head)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the client closed the connection
            await answer(writer)

    server = await asyncio.start_server(handle, host, 0)
    port = server.sockets[0].getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    provider = OpenAICompatibleProvider(
        ProviderEnv(environ={}, settings={"base_url": f"http://{url_host}:{port}/v1"})
    )
    try:
        yield provider
    finally:
        await provider.aclose()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_body_that_ends_when_the_server_closes() -> None:
    """No Content-Length, not chunked: the body ends with the connection (HTTP/1.0 style)."""

    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        writer.write(_sse_body(["a", "b"]))
        await writer.drain()
        writer.close()

    async with _raw_server(answer) as provider:
        for _ in range(2):  # the second one on a new connection
            assert await collect(provider.stream(make_request("m"))) == ["a", "b"]


async def test_a_server_that_closes_idle_connections() -> None:
    async def answer(writer: asyncio.StreamWriter) -> None:
        body = _sse_body(["ok"])
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # its keep-alive timeout, after the answer

    async with _raw_server(answer) as provider:
        for _ in range(3):
            assert await collect(provider.stream(make_request("m"))) == ["ok"]
            await asyncio.sleep(0.1)


async def test_a_response_that_is_not_http_is_an_upstream_error() -> None:
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()

    async with _raw_server(answer) as provider:
        with pytest.raises(ProviderUpstreamError), anyio.fail_after(5):
            await collect(provider.stream(make_request("m")))


async def test_an_ipv6_server_gets_a_bracketed_host_header() -> None:
    async def answer(writer: asyncio.StreamWriter) -> None:
        body = _sse_body(["six"])
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    heads: list[bytes] = []
    async with _raw_server(answer, host="::1", requests=heads) as provider:
        assert await collect(provider.stream(make_request("m"))) == ["six"]
    (head,) = heads
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nHost: [::1]:" in head
