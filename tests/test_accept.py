"""``Accept`` is read as RFC 9110's list of media ranges with q-values: an error answer is SSE
when the client prefers ``text/event-stream`` (contract 2.2), JSON otherwise."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from flowserve.http.accept import (
    ANY,
    EXACT,
    MAX_ACCEPT,
    NONE,
    SUBTYPE_WILDCARD,
    MediaRange,
    parse,
    prefers_event_stream,
    quality,
)
from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow

SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("accept"))
    try:
        srv.publish_file("echo.yaml")
        yield srv
    finally:
        stop_server(srv)


def refused(server: Server, *accept: str) -> httpx.Response:
    """A run request with a wrong key (401), sent with these ``Accept`` header lines."""
    headers = [("Authorization", "Bearer wrong"), ("Content-Type", "application/json")]
    headers += [("Accept", value) for value in accept]
    return httpx.post(
        f"{server.base_url}/stream_exported_flow?flow_id=echo&org={server.org}",
        content=b"{}",
        headers=headers,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("text/event-stream", SSE),
        ("TEXT/EVENT-STREAM", SSE),  # media types are case-insensitive
        ("Text/Event-Stream", SSE),
        ("text/event-stream; charset=utf-8", SSE),  # parameters do not hide the type
        ("text/event-stream;q=0.5", SSE),
        ("text/event-stream;Q=1.0", SSE),
        ("text/event-stream, text/plain", SSE),  # the docs' client (with fetch-event-source)
        ("application/json;q=0.9, text/event-stream", SSE),
        ("application/json, text/event-stream", SSE),  # a tie: the named stream wins
        ("text/event-stream, */*", SSE),
        ("text/*", SSE),  # JSON is not acceptable, the stream is
        ("text/event-stream;q=0", JSON),  # q=0: not acceptable
        ("text/event-stream;q=0.000", JSON),
        ("text/event-stream;q=0.5, application/json", JSON),  # JSON preferred
        ("text/event-stream;q=0.5, */*", JSON),
        ("*/*", JSON),  # curl's and httpx's default: no preference, JSON as before
        ("text/*, application/json", JSON),
        ("application/json", JSON),
        ("text/html", JSON),  # nothing acceptable: the error is still answered, in JSON
        ("", JSON),
        ("x-text/event-stream", JSON),  # the old substring match said SSE
        ("text/event-streamer", JSON),
        ('application/json;q="0.5", text/event-stream;q=0.4', SSE),  # quoted q: malformed
        ("text/event-stream;q=2", JSON),  # q above 1: malformed, ignored
        ("text/event-stream;q=abc", JSON),
        ("text/event-stream;q=0.5000", JSON),  # more than three decimals
        ("text event-stream", JSON),
    ],
)
def test_error_answer_follows_accept(server: Server, accept: str, expected: str):
    r = refused(server, accept)
    assert r.status_code == 401
    assert r.headers["content-type"] == expected
    if expected == SSE:
        assert r.text.startswith("data: ")
        assert json.loads(r.text.removeprefix("data: "))["status"] == 401
    else:
        assert r.json()["detail"]


def test_no_accept_header_gets_json(server: Server):
    r = refused(server)
    assert r.status_code == 401 and r.headers["content-type"] == JSON


def test_several_accept_lines_are_one_list(server: Server):
    # RFC 9110 5.3: field lines with the same name make one comma-separated list.
    assert (
        refused(server, "application/json;q=0.5", "text/event-stream").headers["content-type"]
        == SSE
    )
    assert (
        refused(server, "text/event-stream", "text/event-stream;q=0").headers["content-type"] == SSE
    )  # the same range twice: the higher q counts
    assert refused(server, "text/plain", "application/json").headers["content-type"] == JSON


def test_malformed_entries_are_skipped_not_fatal(server: Server):
    # A broken entry in the list does not spoil the good ones around it.
    for accept in (
        "garbage, text/event-stream",
        "text/event-stream;q=, text/event-stream",
        ";;;, , text/event-stream",
        'text/event-stream;x="a,b", text/plain',
    ):
        assert refused(server, accept).headers["content-type"] == SSE, accept


def test_a_quoted_comma_does_not_split_an_entry(server: Server):
    # ``q=0`` belongs to the entry whose quoted parameter holds a comma.
    r = refused(server, 'text/event-stream;x="a, text/event-stream";q=0')
    assert r.headers["content-type"] == JSON


def test_parse_reads_ranges_parameters_and_q():
    assert parse("TEXT/Event-Stream;charset=UTF-8;q=0.5, */*;q=0.1") == [
        MediaRange("text", "event-stream", 500),
        MediaRange("*", "*", 100),
    ]
    assert parse("a/b ; q=1.0 ; ext=1, c/d;;q=0.25,e/f") == [
        MediaRange("a", "b", 1000),
        MediaRange("c", "d", 250),
        MediaRange("e", "f", 1000),
    ]
    assert parse("") == parse(" , ,") == []


@pytest.mark.parametrize(
    "entry",
    [
        "text",
        "/json",
        "text/",
        "*/json",
        "te xt/plain",
        "a/b;q=1.5",
        "a/b;q=-1",
        "a/b;q",
        "a/b;q=",
        "a/b;q=.5",
        "a/b;q=0.1234",
        'a/b;q="1"',
        "a/b;=1",
        "a/b c/d",
        "a/b;x=y z",
    ],
)
def test_parse_skips_a_malformed_entry(entry: str):
    assert parse(f"{entry}, good/one;q=0.5") == [MediaRange("good", "one", 500)]


def test_parse_keeps_quoted_commas_and_semicolons_inside_their_entry():
    assert parse('a/b;x="1,2;q=0", c/d;y="\\"\\,";q=0.3') == [
        MediaRange("a", "b", 1000),
        MediaRange("c", "d", 300),
    ]


def test_an_unclosed_quote_runs_to_the_end():
    assert parse('good/one, a/b;x="open, c/d') == [MediaRange("good", "one", 1000)]


def test_quality_takes_the_most_specific_matching_range():
    ranges = parse("text/*;q=0.3, text/event-stream;q=0.7, */*;q=0.1")
    assert quality(ranges, "text/event-stream") == (700, EXACT)
    assert quality(ranges, "text/plain") == (300, SUBTYPE_WILDCARD)
    assert quality(ranges, "application/json") == (100, ANY)
    assert quality(parse("text/plain"), "application/json") == (0, NONE)
    # Among equally specific ranges, the highest q.
    assert quality(parse("a/b;q=0.2, a/b;q=0.9, a/b;q=0"), "a/b") == (900, EXACT)


@pytest.mark.parametrize(
    ("accept", "sse"),
    [
        ("text/event-stream", True),
        ("application/json, text/event-stream", True),
        ("text/event-stream;q=0.9, application/*", False),
        ("application/*;q=0.9, text/event-stream", True),
        ("*/*", False),
        ("", False),
        ("*/*;q=0, text/event-stream;q=0.001", True),
    ],
)
def test_prefers_event_stream(accept: str, sse: bool):
    assert prefers_event_stream(accept) is sse


def test_an_overlong_accept_is_ignored():
    padding = "a/b;q=0.5, " * (MAX_ACCEPT // 11 - 2)  # just under the limit with the rest
    assert prefers_event_stream(padding + "text/event-stream")
    assert not prefers_event_stream(padding * 2 + "text/event-stream")
