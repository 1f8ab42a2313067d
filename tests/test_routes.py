"""The route table (flowserve.http.routes): each route declared once, and everything that
reads it (parameter parsing, its 422s, 405s, preflights, the OpenAPI document) agreeing
with the declaration because there is nothing else to agree with."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.responses import Response

from flowserve.errors import ParameterError
from flowserve.http.openapi import document
from flowserve.http.routes import ROUTES
from flowserve.http.routing import Call, Param, Route, RouteTable
from tests import sse
from tests.conftest import Server


def stream(server: Server, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        server.base_url + path.format(org=server.org),
        content=json.dumps({"in-0": "a b c"}),
        headers={**server.auth(), **(headers or {})},
        timeout=30,
    )


def texts(r: httpx.Response) -> list[str]:
    return [m.json()["out-0"] for m in sse.parse(r.text)]


async def _nothing(call: Call) -> Response:
    return Response(b"")


def _scope(query: str) -> dict[str, object]:
    return {"query_string": query.encode()}


def test_one_declaration_drives_parsing_and_the_document() -> None:
    limit = Param("limit", int, default=20, description="how many", ge=1, le=100)
    route = Route("GET", "/things/{org}", _nothing, "Things", params=(limit,))
    assert route.parse(_scope(""), {}) == {"limit": 20}
    assert route.parse(_scope("limit=7"), {}) == {"limit": 7}
    with pytest.raises(ParameterError) as refused:
        route.parse(_scope("limit=101"), {})
    assert refused.value.problems == [
        (("query", "limit"), "Input should be less than or equal to 100", "less_than_equal")
    ]
    [parameter] = document([route], "t", "1", "")["paths"]["/things/{org}"]["get"]["parameters"]
    assert parameter == {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "how many",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    }


def test_every_problem_is_reported_at_once_in_fastapis_shape() -> None:
    route = next(r for r in ROUTES if r.path == "/stream_exported_flow")
    with pytest.raises(ParameterError) as refused:
        route.parse(_scope("flow_id=&delta=maybe&version=x"), {})
    assert refused.value.problems == [
        (("query", "flow_id"), "String should have at least 1 character", "string_too_short"),
        (("query", "org"), "Field required", "missing"),
        (
            ("query", "delta"),
            "Input should be a valid boolean, unable to interpret input",
            "bool_parsing",
        ),
        (
            ("query", "version"),
            "Input should be a valid integer, unable to parse string as an integer",
            "int_parsing",
        ),
    ]


def test_the_table_matches_paths_and_methods() -> None:
    table = RouteTable(ROUTES)
    found = table.match("POST", "/inference/v0/stream/acme/echo")
    assert found is not None
    routes, values = found
    assert routes["POST"].path == "/inference/v0/stream/{org}/{flow_id}"
    assert values == {"org": "acme", "flow_id": "echo"}
    assert table.match("POST", "/inference/v0/stream/acme/echo/extra") is None
    flows = table.match("OPTIONS", "/v1/orgs/acme/flows")
    assert flows is not None and set(flows[0]) == {"GET", "POST"}


def test_each_route_is_declared_once() -> None:
    keys = [(r.method, r.path) for r in ROUTES]
    assert len(keys) == len(set(keys))


@pytest.mark.slow
@pytest.mark.parametrize(
    "query, delta",
    [
        ("", False),
        ("&delta=true", True),
        ("&delta=YES", True),  # booleans are case-insensitive, as pydantic's
        ("&delta=oN", True),
        ("&delta=off", False),
        ("&delta=0&version=-1", False),
        ("&version=01", False),  # a plain integer with a leading zero
        ("&api_key=ignored", False),  # unknown parameters are ignored
    ],
)
def test_legacy_parameters_accepted(server: Server, query: str, delta: bool) -> None:
    r = stream(server, "/stream_exported_flow?flow_id=echo&org={org}" + query)
    assert r.status_code == 200, r.text
    out = texts(r)
    if delta:
        assert "".join(out) == "a b c" and max(map(len, out)) <= 2
    else:
        assert out[-1] == "a b c" and all(
            out[i + 1].startswith(out[i]) for i in range(len(out) - 1)
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "query, loc, kind",
    [
        ("?org={org}", ["query", "flow_id"], "missing"),
        ("?flow_id=&org={org}", ["query", "flow_id"], "string_too_short"),
        ("?flow_id=" + "x" * 65 + "&org={org}", ["query", "flow_id"], "string_too_long"),
        ("?flow_id=echo&org={org}&delta=maybe", ["query", "delta"], "bool_parsing"),
        ("?flow_id=echo&org={org}&delta=%20true", ["query", "delta"], "bool_parsing"),
        ("?flow_id=echo&org={org}&version=-2", ["query", "version"], "greater_than_equal"),
        ("?flow_id=echo&org={org}&version=4294967296", ["query", "version"], "less_than_equal"),
        ("?flow_id=echo&org={org}&version=1.5", ["query", "version"], "int_parsing"),
        ("?flow_id=echo&org={org}&version=%201", ["query", "version"], "int_parsing"),
        ("?flow_id=echo&org={org}&version=+1", ["query", "version"], "int_parsing"),  # " 1"
        ("?flow_id=nope&flow_id=echo&org={org}", ["query", "flow_id"], "repeated"),
    ],
)
def test_legacy_parameters_refused(server: Server, query: str, loc: list[str], kind: str) -> None:
    r = stream(server, "/stream_exported_flow" + query)
    assert r.status_code == 422, r.text
    [detail] = r.json()["detail"]
    assert set(detail) == {"loc", "msg", "type"}
    assert (detail["loc"], detail["type"]) == (loc, kind)


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, status",
    [
        ("/inference/v0/stream/{org}/echo?sse=TRUE&delta=no&verbose=1", 200),
        ("/inference/v0/stream/{org}/echo?sse=true&verbose=perhaps", 422),
        ("/inference/v0/stream/{org}/echo/extra?sse=true", 404),
        ("/inference/v0/stream/{org}/" + "x" * 65 + "?sse=true", 422),
    ],
)
def test_v0_stream_parameters(server: Server, path: str, status: int) -> None:
    r = stream(server, path)
    assert r.status_code == status, r.text
    if status == 200:
        frames = [m.json() for m in sse.parse(r.text)]
        assert frames[-1]["outputs"]["out-0"] == "a b c"  # cumulative: delta=no
    else:
        assert "detail" in r.json()


@pytest.mark.slow
def test_parameters_are_checked_before_the_key(server: Server) -> None:
    r = httpx.post(
        f"{server.base_url}/stream_exported_flow?flow_id=&org={server.org}",
        headers={"Authorization": "Bearer fs-pub-nope-nope"},
        timeout=30,
    )
    assert r.status_code == 422
    r = httpx.post(
        f"{server.base_url}/stream_exported_flow?flow_id=echo&org={server.org}",
        content=b"{}",
        headers={"Authorization": "Bearer fs-pub-nope-nope"},
        timeout=30,
    )
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


@pytest.mark.slow
def test_a_known_path_with_the_wrong_method_is_405_naming_the_allowed_ones(server: Server) -> None:
    r = httpx.delete(f"{server.base_url}/v1/orgs/{server.org}/flows", timeout=30)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"
    assert r.json() == {"detail": "Method Not Allowed"}
    r = httpx.get(f"{server.base_url}/stream_exported_flow", timeout=30)
    assert (r.status_code, r.headers["allow"]) == (405, "POST")


@pytest.mark.slow
def test_an_unknown_path_is_a_json_404(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/nothing/here", timeout=30)
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


@pytest.mark.slow
def test_the_document_lists_every_declared_route_with_its_limits(server: Server) -> None:
    schema = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    documented = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in ROUTES if r.documented}
    stream_op = schema["paths"]["/inference/v0/stream/{org}/{flow_id}"]["post"]
    params = {p["name"]: p for p in stream_op["parameters"]}
    assert params["delta"]["schema"] == {"type": "boolean", "default": True}
    assert params["version"]["schema"]["minimum"] == -1
    assert params["org"]["in"] == "path" and params["org"]["schema"]["maxLength"] == 64
    assert {"401", "404", "413", "422", "429", "503"} <= set(stream_op["responses"])
    assert httpx.get(f"{server.base_url}/docs", timeout=30).status_code == 200


@pytest.mark.slow
def test_listing_flows_takes_a_limit(server: Server) -> None:
    for name in ("echo.yaml", "chain.yaml", "long.yaml"):
        server.publish_file(name)
    url = f"{server.base_url}/v1/orgs/{server.org}/flows"
    auth = server.auth(server.private_key)
    every = [f["flow_id"] for f in httpx.get(url, headers=auth, timeout=30).json()]
    assert len(every) >= 3 and every == sorted(every)
    two = httpx.get(url, params={"limit": 2}, headers=auth, timeout=30).json()
    assert [f["flow_id"] for f in two] == every[:2]
    refused = httpx.get(url, params={"limit": 0}, headers=auth, timeout=30)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["query", "limit"]
