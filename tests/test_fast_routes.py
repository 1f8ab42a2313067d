"""The streaming routes' fast dispatch (flowserve.http.fast_routes) answers exactly as FastAPI
would: spellings FastAPI accepts work the same whichever path takes them, and anything it
rejects is still rejected by FastAPI, with FastAPI's own wording."""

from __future__ import annotations

import json

import httpx
import pytest

from tests import sse
from tests.conftest import Server

pytestmark = pytest.mark.slow


def stream(server: Server, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        server.base_url + path.format(org=server.org),
        content=json.dumps({"in-0": "a b c"}),
        headers={**server.auth(), **(headers or {})},
        timeout=30,
    )


def texts(r: httpx.Response) -> list[str]:
    return [m.json()["out-0"] for m in sse.parse(r.text)]


@pytest.mark.parametrize(
    "query, delta",
    [
        ("", False),
        ("&delta=true", True),
        ("&delta=YES", True),  # FastAPI's booleans are case-insensitive
        ("&delta=oN", True),
        ("&delta=off", False),
        ("&delta=0&version=-1", False),
        ("&version=01", False),  # a plain integer with a leading zero
        ("&version=+1", False),  # not plain: FastAPI decides, and accepts it
        ("&version=%201", False),  # likewise with a leading space
        ("&api_key=ignored", False),  # unknown parameters are ignored, as by FastAPI
    ],
)
def test_legacy_parameters_fastapi_accepts(server: Server, query: str, delta: bool):
    r = stream(server, "/stream_exported_flow?flow_id=echo&org={org}" + query)
    assert r.status_code == 200, r.text
    out = texts(r)
    if delta:
        assert "".join(out) == "a b c" and max(map(len, out)) <= 2
    else:
        assert out[-1] == "a b c" and all(
            out[i + 1].startswith(out[i]) for i in range(len(out) - 1)
        )


@pytest.mark.parametrize(
    "query, loc",
    [
        ("?org={org}", ["query", "flow_id"]),
        ("?flow_id=&org={org}", ["query", "flow_id"]),
        ("?flow_id=" + "x" * 65 + "&org={org}", ["query", "flow_id"]),
        ("?flow_id=echo&org={org}&delta=maybe", ["query", "delta"]),
        ("?flow_id=echo&org={org}&delta=%20true", ["query", "delta"]),
        ("?flow_id=echo&org={org}&version=-2", ["query", "version"]),
        ("?flow_id=echo&org={org}&version=4294967296", ["query", "version"]),
        ("?flow_id=echo&org={org}&version=1.5", ["query", "version"]),
    ],
)
def test_legacy_parameters_fastapi_rejects(server: Server, query: str, loc: list[str]):
    r = stream(server, "/stream_exported_flow" + query)
    assert r.status_code == 422, r.text
    assert [d["loc"] for d in r.json()["detail"]] == [loc]


def test_a_repeated_parameter_is_fastapis_to_resolve(server: Server):
    r = stream(server, "/stream_exported_flow?flow_id=nope&flow_id=echo&org={org}")
    assert r.status_code == 200  # FastAPI takes the last one
    assert texts(r)[-1] == "a b c"


@pytest.mark.parametrize(
    "path, status",
    [
        ("/inference/v0/stream/{org}/echo?sse=TRUE&delta=no&verbose=1", 200),
        ("/inference/v0/stream/{org}/echo?sse=true&verbose=perhaps", 422),
        ("/inference/v0/stream/{org}/echo/extra?sse=true", 404),
        ("/inference/v0/stream/{org}/" + "x" * 65 + "?sse=true", 422),
    ],
)
def test_v0_stream_parameters(server: Server, path: str, status: int):
    r = stream(server, path)
    assert r.status_code == status, r.text
    if status == 200:
        frames = [m.json() for m in sse.parse(r.text)]
        assert frames[-1]["outputs"]["out-0"] == "a b c"  # cumulative: delta=no


def test_errors_from_the_endpoint_are_the_same_on_the_fast_path(server: Server):
    r = stream(server, "/stream_exported_flow?flow_id=nope&org={org}")
    assert r.status_code == 404 and isinstance(r.json()["detail"], str)
    r = stream(
        server,
        "/stream_exported_flow?flow_id=nope&org={org}",
        {"Accept": "text/event-stream"},
    )
    assert r.status_code == 404
    [message] = list(sse.parse(r.text))
    assert message.json()["status"] == 404
    r = httpx.post(
        server.base_url + f"/stream_exported_flow?flow_id=echo&org={server.org}",
        content=b"{}",
        headers={"Authorization": "Bearer fs-pub-nope-nope"},
        timeout=30,
    )
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
