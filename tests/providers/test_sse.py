"""The raw SSE reader used by adapters that parse the body themselves."""

from __future__ import annotations

import pytest

from flowserve.providers._sse import sse_data

pytestmark = pytest.mark.anyio


async def events(*chunks: bytes) -> list[bytes]:
    async def source():
        for chunk in chunks:
            yield chunk

    return [data async for data in sse_data(source())]


async def test_events_split_anywhere_across_reads():
    body = 'data: {"a":"héllo 日本 🎉"}\n\n: comment\n\ndata: [DONE]\n\n'.encode()
    for cut in range(1, len(body)):
        assert await events(body[:cut], body[cut:]) == ['{"a":"héllo 日本 🎉"}'.encode(), b"[DONE]"]


async def test_line_ends_multiline_data_and_fields():
    assert await events(b"event: x\r\nid: 1\r\ndata: a\r\ndata:b\r\n\r\n", b"data:  c\r\r") == [
        b"a\nb",
        b" c",
    ]


async def test_a_last_event_without_its_blank_line_is_still_delivered():
    assert await events(b"data: x\n\ndata: y\n") == [b"x", b"y"]
