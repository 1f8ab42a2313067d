"""What the pages' routes send, over plain HTTP: the page with its security headers, its
assets, the flow's interface (and what it must not reveal), the per-node timings of a
stream's last envelope, and the page address `flowserve quickstart` prints."""

from __future__ import annotations

import json
from importlib.resources import files

import httpx
import pytest

from flowserve.cli.serve import page_url
from flowserve.config import Settings
from flowserve.http.ui import CSP
from flowserve.ui import ASSETS, PAGE
from tests.browser.conftest import Pages

pytestmark = pytest.mark.slow

MEDIA = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}


def get(pages: Pages, path: str, **kwargs) -> httpx.Response:
    return httpx.get(pages.server.base_url + path, timeout=30, **kwargs)


def interface(pages: Pages, flow: str, key: str | None = None, **kwargs) -> httpx.Response:
    path = f"/v1/orgs/{pages.server.org}/flows/{flow}/interface"
    headers = {**pages.server.auth(key), **kwargs.pop("headers", {})}
    return get(pages, path, headers=headers, **kwargs)


def test_the_csp_is_the_strict_one() -> None:
    assert CSP == (
        "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )


@pytest.mark.parametrize("mode", ["", "/chat"])
def test_the_page_is_html_with_a_strict_policy_and_revalidated(pages: Pages, mode: str) -> None:
    page = get(pages, f"/ui/{pages.server.org}/form{mode}")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert '<script type="module" src="/ui/assets/app.js"></script>' in page.text
    again = get(
        pages, f"/ui/{pages.server.org}/form{mode}", headers={"If-None-Match": page.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""


def test_the_page_holds_nothing_of_a_flow_and_needs_no_key(pages: Pages) -> None:
    known = get(pages, f"/ui/{pages.server.org}/form")
    unknown = get(pages, "/ui/no-such-org/no-such-flow/chat")
    assert (
        known.content == unknown.content == (files("flowserve.ui") / "static" / PAGE).read_bytes()
    )
    assert get(pages, "/ui/" + "x" * 65 + "/form").status_code == 422
    # only a name a flow can have has a page
    assert get(pages, f"/ui/{pages.server.org}/app.js").status_code == 404
    assert get(pages, f"/ui/{pages.server.org}/9lives/chat").status_code == 404


def test_the_assets_are_the_shipped_files_with_their_types(pages: Pages) -> None:
    shipped = {p.name for p in (files("flowserve.ui") / "static").iterdir()} - {PAGE}
    assert set(ASSETS) == shipped
    for name in ASSETS:
        asset = get(pages, f"/ui/assets/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"].split(";")[0] == MEDIA[name.rsplit(".", 1)[1]]
        assert asset.headers["cache-control"] == "no-cache"
        assert asset.content == (files("flowserve.ui") / "static" / name).read_bytes()
        cached = get(pages, f"/ui/assets/{name}", headers={"If-None-Match": asset.headers["etag"]})
        assert cached.status_code == 304
    assert get(pages, "/ui/assets/nothing.js").status_code == 404


def test_no_page_script_parses_html() -> None:
    # The first line of defence, which the browser tests check in action: no HTML sinks.
    for name in ASSETS:
        if name.endswith(".js"):
            source = (files("flowserve.ui") / "static" / name).read_text()
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
                assert sink not in source, (name, sink)


def test_the_interface_says_what_a_page_needs(pages: Pages) -> None:
    response = interface(pages, "form")
    assert response.status_code == 200
    assert response.json() == {
        "flow_id": "form",
        "name": "Form flow",
        "description": "Answers in a tone.",
        "version": 1,
        "inputs": [
            {"id": "in-0", "description": "Your question", "default": None},
            {"id": "in-1", "description": "Tone", "default": "friendly"},
        ],
        "outputs": [
            {"id": "out-0", "source": "llm-0"},
            {"id": "out-1", "source": "tpl-0"},
            {"id": "out-2", "source": "in-1"},
        ],
        "nodes": [
            {"id": "llm-0", "type": "llm", "deps": [], "inputs": ["in-0", "in-1"]},
            {"id": "tpl-0", "type": "template", "deps": [], "inputs": ["in-0"]},
        ],
        "chat": {"input": "in-0", "output": "out-0"},
    }
    # the publisher's prompts, system text, provider and model stay the publisher's
    for secret in ("SECRET-SYSTEM-TEXT", "{in-1}: {in-0}", "Q: {in-0}", "scripted", "echo"):
        assert secret not in response.text
    chain = interface(pages, "chain").json()
    assert [n["deps"] for n in chain["nodes"]] == [[], ["llm-0"]]
    assert interface(pages, "chat").json()["chat"] == {"input": "in-1", "output": "out-1"}


def test_the_interface_is_refused_as_the_api_refuses(pages: Pages) -> None:
    missing = interface(pages, "no-such-flow")
    assert missing.status_code == 404 and "detail" in missing.json()
    assert interface(pages, "form", params={"version": 7}).status_code == 404
    bad = interface(pages, "form", key="fs-pub-nope-nope")
    assert bad.status_code == 401 and bad.json() == {"detail": "invalid API key"}
    assert interface(pages, "form", key=pages.server.private_key).status_code == 200
    # from a browser on another site: allowed only for a key that lists that origin
    site = {"Origin": "https://elsewhere.example"}
    assert interface(pages, "form", headers=site).status_code == 403
    own = {"Origin": pages.server.base_url}
    allowed = interface(pages, "form", key=pages.key, headers=own)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == pages.server.base_url


def _last_envelope(pages: Pages, flow: str) -> dict:
    response = httpx.post(
        f"{pages.server.base_url}/inference/v0/stream/{pages.server.org}/{flow}",
        content=b"{}",
        headers=pages.server.auth(),
        timeout=30,
    )
    assert response.status_code == 200
    return dict(json.loads(response.text.splitlines()[-1]))


def test_the_last_envelope_carries_each_nodes_timing(pages: Pages) -> None:
    done = _last_envelope(pages, "chain")
    assert done["state"] == "COMPLETED"
    nodes = done["metadata"]["nodes"]
    assert set(nodes) == {"llm-0", "llm-1"}
    assert all(t["state"] == "COMPLETED" for t in nodes.values())
    assert nodes["llm-1"]["started_ms"] >= nodes["llm-0"]["started_ms"]
    assert nodes["llm-1"]["duration_ms"] >= 8 * 250 * 0.9  # eight tokens 0.25 s apart
    failed = _last_envelope(pages, "failing")
    assert failed["state"] == "FAILED"
    assert failed["metadata"]["nodes"]["llm-0"]["state"] == "FAILED"  # not left "RUNNING"


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", "http://127.0.0.1:8123"),
        ("0.0.0.0", "http://127.0.0.1:8123"),
        ("::1", "http://[::1]:8123"),
    ],
)
def test_quickstart_names_the_example_flows_page(host: str, expected: str) -> None:
    url, origin = page_url(Settings(host=host, port=8123), "default")
    assert (url, origin) == (f"{expected}/ui/default/support-bot", expected)
