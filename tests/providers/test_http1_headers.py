"""What the ``_http1`` client refuses to send: a header name or value, or a URL, that could
end its line and so write headers (or a second request) of its own. Refused before any
connection is made, without quoting the value (it is often the key)."""

from __future__ import annotations

import pytest
from tests.fakes.raw_http1 import RawConnection, RawServer, response, sse
from tests.providers._support import collect, make_request

from flowserve.errors import ProviderBadRequestError
from flowserve.providers._http1 import Pool, Target
from flowserve.providers.base import ProviderEnv
from flowserve.providers.openai_compatible import OpenAICompatibleProvider

URL = "http://127.0.0.1:9/v1/chat/completions"


async def answer_all(conn: RawConnection) -> None:
    while await conn.read_request() is not None:
        await conn.send(response(sse("ok")))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("Authorization", "Bearer sk-secret\r\nX-Injected: 1", "contains CR, LF or NUL"),
        ("Authorization", "Bearer sk-secret\nX-Injected: 1", "contains CR, LF or NUL"),
        ("Authorization", "Bearer sk-secret\rX-Injected: 1", "contains CR, LF or NUL"),
        ("Authorization", "Bearer sk-secret\x00", "contains CR, LF or NUL"),
        ("Authorization", "Bearer sk-secret\u043a\u043b\u044e\u0447", "outside Latin-1"),
        ("X-Ok\r\nX-Injected", "1", "is not a valid token"),
        ("X-Ok: 1\r\nX-Injected", "1", "is not a valid token"),
        ("X Spaced", "1", "is not a valid token"),
        ("", "1", "is not a valid token"),
    ],
)
def test_a_header_that_could_break_its_line_is_refused(name: str, value: str, message: str) -> None:
    with pytest.raises(ProviderBadRequestError, match=message) as caught:
        Target(URL, {"Accept": "text/event-stream", name: value})
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/v1 HTTP/1.1/chat/completions",
        "http://127.0.0.1:9/v1\x00/chat/completions",
        "http://127.0.0.1:9/v1/chat/completions?a=\x7f",
        "http://127.0.0.1:9/v\u00e9/chat/completions",
    ],
)
def test_a_url_that_could_break_the_request_line_is_refused(url: str) -> None:
    with pytest.raises(ProviderBadRequestError, match="percent-encode"):
        Target(url, {})


def test_a_plain_head_is_unchanged() -> None:
    target = Target(URL + "?x=1", {"Authorization": "Bearer sk-1", "X-Empty": ""})
    assert target.head == (
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"
        b"Authorization: Bearer sk-1\r\nX-Empty: \r\n"
    )


@pytest.mark.anyio
async def test_a_key_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    with RawServer(answer_all) as server:
        env = ProviderEnv(
            environ={"KEY": "sk-secret\r\nX-Injected: 1"},
            settings={"base_url": server.base_url, "api_key_env": "KEY"},
        )
        provider = OpenAICompatibleProvider(env)
        try:
            with pytest.raises(ProviderBadRequestError) as caught:
                await collect(provider.stream(make_request("m")))
        finally:
            await provider.aclose()
        assert caught.value.message == (
            "request header Authorization contains CR, LF or NUL (check the key or setting it "
            "comes from): refused, as it could inject headers"
        )
        assert "secret" not in str(caught.value)
        assert server.connections == []  # not even a connection


@pytest.mark.anyio
@pytest.mark.parametrize(
    "extra",
    [
        b"X-A: 1\nX-Injected: 1\r\n",
        b"X-A: 1\rX-Injected: 1\r\n",
        b"X-A: 1\r\n\r\nPOST /v1/other HTTP/1.1\r\n",
        b"X-A: \x00\r\n",
        b"X-A: 1",  # not CRLF-terminated: the Content-Length line would join it
        b"\r\n",
    ],
)
async def test_extra_header_lines_that_break_out_are_refused(extra: bytes) -> None:
    with RawServer(answer_all) as server:
        pool = Pool(5.0)
        target = Target(server.url, {})
        try:
            with pytest.raises(ProviderBadRequestError, match="extra request headers"):
                await pool.post(target, extra, b"{}")
            answer = await pool.post(target, b"X-A: 1\r\nX-B: two\r\n", b"{}")
            answer.close()
        finally:
            await pool.aclose()
        (request,) = server.requests
        assert b"\r\nX-A: 1\r\nX-B: two\r\nContent-Length: 2\r\n\r\n" in request.head
