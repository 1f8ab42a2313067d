"""Browser access, decided per key (flowserve.http.admission, flowserve.http.edge): preflights answered permissively,
the actual request allowed or refused (403) by the key's allowed origins before any run."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from flowserve.auth import PRIVATE, PUBLIC
from tests import sse
from tests.conftest import Server
from tests.security import add_key

pytestmark = pytest.mark.slow

APP = "https://app.example.com"
EVIL = "https://evil.example.net"


@pytest.fixture(scope="module")
def keys(server: Server) -> dict[str, str]:
    url = server.database_url
    return {
        "app": add_key(url, server.org, PUBLIC, origins=["https://App.Example.com/"]),
        "any": add_key(url, server.org, PUBLIC, origins=["*"]),
        "none": server.public_key,  # no origins: server-to-server only
        "private": server.private_key,
        "private-app": add_key(url, server.org, PRIVATE, origins=[APP]),
    }


def run_count(server: Server) -> int:
    with sqlite3.connect(server.database_url.split("///", 1)[1]) as db:
        return int(db.execute("SELECT count(*) FROM runs").fetchone()[0])


def post(server: Server, path: str, key: str, origin: str | None, **headers: str):
    if origin is not None:
        headers["Origin"] = origin
    return httpx.post(
        server.base_url + path.format(org=server.org),
        content=json.dumps({"in-0": "a b"}),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
        timeout=30,
    )


LEGACY = "/stream_exported_flow?flow_id=echo&org={org}"
ROUTES = [
    LEGACY,
    "/run_deployed_flow?flow_id=echo&org={org}",
    "/inference/v0/run/{org}/echo",
    "/inference/v0/stream/{org}/echo",
    "/inference/v0/stream/{org}/echo?sse=true",
]


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        (LEGACY, "POST"),
        ("/inference/v0/stream/{org}/echo?sse=true", "POST"),
        ("/inference/v0/stop/{org}/echo?run_id=x", "POST"),
        ("/inference/v0/run/{org}/echo/metadata?run_id=x", "GET"),
        ("/v1/orgs/{org}/flows", "GET, POST"),
    ],
)
def test_preflight_is_answered_without_a_key(server: Server, path: str, methods: str):
    r = httpx.options(
        server.base_url + path.format(org=server.org),
        headers={
            "Origin": EVIL,  # a preflight cannot know the key: it grants nothing by itself
            "Access-Control-Request-Method": methods.split(",")[0],
            "Access-Control-Request-Headers": "authorization, content-type, last-event-id",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == EVIL
    assert r.headers["access-control-allow-methods"] == methods
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
    assert allowed == {"authorization", "content-type", "last-event-id", "accept"}
    assert int(r.headers["access-control-max-age"]) > 0
    assert "Origin" in r.headers["vary"]
    assert "access-control-allow-credentials" not in r.headers


def test_options_that_are_not_preflights_are_not_answered(server: Server):
    url = server.base_url + LEGACY.format(org=server.org)
    assert httpx.options(url).status_code == 405  # no Origin
    assert httpx.options(url, headers={"Origin": APP}).status_code == 405  # no request method
    r = httpx.options(
        f"{server.base_url}/healthz",
        headers={"Origin": APP, "Access-Control-Request-Method": "GET"},
    )
    assert r.status_code == 405 and "access-control-allow-methods" not in r.headers


@pytest.mark.parametrize("path", ROUTES)
def test_allowed_origin_gets_the_headers_on_every_route(server, keys, path):
    for key, origin in [("app", APP), ("any", EVIL), ("private-app", APP)]:
        r = post(server, path, keys[key], origin)
        assert r.status_code == 200, (key, r.text)
        assert r.headers["access-control-allow-origin"] == origin
        assert r.headers["vary"] == "Origin"
        assert '"out-0":"a b"' in r.text or '"state":"COMPLETED"' in r.text


@pytest.mark.parametrize("path", ROUTES)
def test_no_origin_is_server_to_server_and_always_allowed(server, keys, path):
    for key in keys.values():
        r = post(server, path, key, None)
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers


def test_disallowed_origins_are_refused_before_any_run(server: Server, keys):
    before = run_count(server)
    cases = [
        ("app", EVIL, f"origin {EVIL!r} is not allowed for this API key"),
        ("app", "https://app.example.com.evil.net", "is not allowed"),
        ("app", "http://app.example.com", "is not allowed"),  # another scheme is another site
        ("none", APP, f"origin {APP!r} is not allowed for this API key"),
        ("private", APP, "private API keys may not be used from a browser"),
        ("private-app", EVIL, "is not allowed"),
        ("any", "", "is not allowed"),  # no key allows a malformed origin but '*' itself
    ]
    for key, origin, says in cases:
        for path in ROUTES:
            r = post(server, path, keys[key], origin)
            if key == "any":
                assert r.status_code == 200  # '*' means any origin at all
                continue
            assert r.status_code == 403, (key, origin, path, r.status_code)
            assert says in r.json()["detail"], r.json()
            # The refusal is readable by the page that made it (see cors.py's docstring).
            assert r.headers["access-control-allow-origin"] == origin
    assert run_count(server) == before + len(ROUTES)  # only the '*' key's requests ran


def test_refusal_is_framed_for_sse_clients(server: Server, keys):
    r = post(server, LEGACY, keys["none"], EVIL, Accept="text/event-stream")
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["access-control-allow-origin"] == EVIL
    [message] = list(sse.parse(r.text))
    assert message.json()["status"] == 403 and EVIL in message.json()["error"]


def test_private_key_routes_follow_the_same_rule(server: Server, keys):
    flows = f"{server.base_url}/v1/orgs/{server.org}/flows"
    r = httpx.get(flows, headers={"Authorization": f"Bearer {keys['private']}", "Origin": APP})
    assert r.status_code == 403
    r = httpx.get(flows, headers={"Authorization": f"Bearer {keys['private-app']}", "Origin": APP})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP
    r = httpx.get(flows, headers={"Authorization": f"Bearer {keys['private']}"})
    assert r.status_code == 200


def test_errors_before_the_key_is_known_are_readable_by_the_browser(server: Server):
    r = post(server, LEGACY, "fs-pub-aaaaaaaaaaaa-" + "b" * 40, APP)
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == APP
    assert "retry-after" in r.headers["access-control-expose-headers"]


# what the official OpenAI JavaScript SDK (v4, in a page with dangerouslyAllowBrowser) asks
# a preflight to allow before POST /v1/chat/completions
OPENAI_JS_HEADERS = (
    "authorization, content-type, x-stainless-arch, x-stainless-lang, x-stainless-os, "
    "x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, "
    "x-stainless-runtime-version, x-stainless-timeout"
)


def _preflight(server: Server, path: str, requested: str) -> httpx.Response:
    return httpx.options(
        server.base_url + path,
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": requested,
        },
    )


def test_a_preflight_allows_the_openai_sdks_own_headers(server: Server, keys):
    r = _preflight(server, "/v1/chat/completions", OPENAI_JS_HEADERS)
    assert r.status_code == 204
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
    assert allowed >= {h.strip() for h in OPENAI_JS_HEADERS.split(",")}
    # and the request it lets through is decided by the key, as any other
    headers = {h.strip(): "x" for h in OPENAI_JS_HEADERS.split(",")[2:]}
    body = {"model": f"{server.org}/echo", "messages": [{"role": "user", "content": "a b"}]}
    for key, status in (("app", 200), ("none", 403)):
        sent = httpx.post(
            server.base_url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {keys[key]}", "Origin": APP, **headers},
            timeout=30,
        )
        assert sent.status_code == status, sent.text
        assert sent.headers["access-control-allow-origin"] == APP


@pytest.mark.parametrize(
    "requested",
    [
        "x-ok, bad header",  # a space inside a name
        "x-ok, x/y",  # "/" is not a token character
        ", ".join(f"x-h{i}" for i in range(33)),  # too many
    ],
)
def test_a_preflight_names_only_its_own_headers_for_odd_requests(server: Server, requested):
    r = _preflight(server, LEGACY.format(org=server.org), requested)
    assert r.status_code == 204
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
    assert allowed == {"authorization", "content-type", "last-event-id", "accept"}
