"""A flow file's base_url is parsed once, checked on scheme, host and port, and the URL the
provider is given is the one that was checked (providers/endpoints.py)."""

from __future__ import annotations

import socket

import httpx
import pytest

from flowserve.errors import ConfigError, FlowValidationError
from flowserve.providers.endpoints import EndpointError, EndpointPolicy, parse_endpoint
from tests.conftest import start_server, stop_server
from tests.helpers import flow

POLICY = EndpointPolicy()  # the server's default: http on 127.0.0.1, localhost, [::1]

# Each of these passed the old prefix check, and an HTTP client would have connected to the
# host after the "@" (or read the URL differently from the check).
BYPASSES = [
    "http://127.0.0.1:9@2130706433:9999/v1",
    "http://127.0.0.1:80@10.0.0.1/v1",
    "http://localhost:@10.0.0.1/v1",
    "http://[::1]:1@10.0.0.1/v1",
    "http://127.0.0.1:80\t@10.0.0.1/v1",
    "http://127.0.0.1@10.0.0.1/v1",
    "http://127.0.0.1%40evil.example/v1",
    "http://127.0.0.1\\@10.0.0.1/v1",
    "http://127.0.0.1:80 @10.0.0.1/v1",
    "http://127.0.0.1:80\n/v1",
    "http://127.0.0.1\x00.evil.example/v1",
    "http://127.0.0.1.evil.example/v1",
    "http://127.0.0.1:8000#@10.0.0.1/v1",
    "http://127.0.0.1:8000?@10.0.0.1/v1",
    "http://[::1%25eth0]:8000/v1",
    "http://[::ffff:10.0.0.1]/v1",
    "https://attacker.example/v1",
    "http://127.0.0.1:0/v1",
    "http://127.0.0.1:65536/v1",
    "http://127.0.0.1:+80/v1",
    "http://127.0.0.1:\uff18\uff10/v1",  # full-width digits
    "http://1.2.3.4.5/v1",
    "http://127.0.0.256/v1",
    "ftp://127.0.0.1/v1",
    "//127.0.0.1/v1",
    "http://127.0.0.1/v1/../../x",
]


@pytest.mark.parametrize("url", BYPASSES)
def test_a_url_that_could_reach_another_host_is_refused(url: str) -> None:
    with pytest.raises(EndpointError):
        POLICY.check_base_url(url)


@pytest.mark.parametrize(
    ("url", "checked"),
    [
        ("http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/v1"),
        ("HTTP://LocalHost.:8000/v1/", "http://localhost:8000/v1"),
        # IPv4 in every spelling inet_aton accepts becomes dotted decimal, then is compared
        ("http://2130706433:8000/v1", "http://127.0.0.1:8000/v1"),
        ("http://0x7f000001:8000/v1", "http://127.0.0.1:8000/v1"),
        ("http://0x7f.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("http://0177.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("http://127.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("http://[0:0:0:0:0:0:0:1]:8000/v1", "http://[::1]:8000/v1"),
        ("http://[::0001]/v1", "http://[::1]/v1"),
    ],
)
def test_an_allowed_url_is_normalised_and_rebuilt(url: str, checked: str) -> None:
    assert POLICY.check_base_url(url) == checked


@pytest.mark.parametrize(
    "url",
    ["http://2130706434:8000/v1", "http://0x0a000001/v1", "http://[::2]/v1", "http://[::]/v1"],
)
def test_other_hosts_written_as_numbers_are_refused(url: str) -> None:
    with pytest.raises(EndpointError, match="not allowed"):
        POLICY.check_base_url(url)


def test_an_allowed_entry_with_a_port_or_path_admits_only_that() -> None:
    policy = EndpointPolicy(("http://127.0.0.1:11434", "https://llm.example.com/v1"))
    assert policy.check_base_url("http://127.0.0.1:11434/v1") == "http://127.0.0.1:11434/v1"
    assert policy.check_base_url("https://llm.example.com/v1/") == "https://llm.example.com/v1"
    assert policy.check_base_url("https://LLM.example.com:443/v1/x")
    for refused in (
        "http://127.0.0.1:11435/v1",
        "http://127.0.0.1/v1",  # port 80, not 11434
        "https://llm.example.com/v10",
        "https://llm.example.com",
        "http://llm.example.com/v1",  # not https
        "https://llm.example.com.evil.example/v1",
    ):
        with pytest.raises(EndpointError):
            policy.check_base_url(refused)


def test_a_bad_allowed_entry_is_a_startup_error_not_a_hole() -> None:
    with pytest.raises(ConfigError, match="allowed_base_urls"):
        EndpointPolicy(("http://user@127.0.0.1",))


def test_the_parsed_url_is_what_the_provider_is_given() -> None:
    compiled = flow(
        """
        id: f
        nodes:
          a: {type: llm, provider: openai-compatible, model: m,
              base_url: "http://0x7F000001:11434/v1/", prompt: "x"}
        outputs: {out-0: a}
        """
    )
    checked = compiled.nodes["a"].data  # what the llm node type keeps: the checked base_url
    assert checked == "http://127.0.0.1:11434/v1"
    assert parse_endpoint(checked).host == "127.0.0.1"


@pytest.mark.parametrize("provider", ["openai", "openai-compatible", "anthropic", "replicate"])
def test_publish_refuses_userinfo_for_every_provider(provider: str) -> None:
    with pytest.raises(FlowValidationError) as info:
        flow(
            f"""
            id: f
            nodes:
              a: {{type: llm, provider: {provider}, model: m/m,
                  base_url: "http://127.0.0.1:9@2130706433:9999/v1", prompt: "x"}}
            outputs: {{out-0: a}}
            """
        )
    [(loc, message)] = info.value.problems
    assert loc == "nodes.a.base_url"
    assert "'@'" in message


@pytest.mark.slow
def test_the_server_never_sends_its_key_past_an_at_sign(tmp_path) -> None:
    """The issue's demonstration, end to end: a listener on 127.0.0.1 (written 2130706433
    after the '@') must receive nothing, whether the flow is published or run."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    server = start_server(tmp_path, env={"OPENAI_API_KEY": "sk-test-NEVERSENT"})
    try:
        for provider in ("openai", "openai-compatible"):
            text = f"""
id: grab-{provider}
inputs: {{in-0: {{}}}}
nodes:
  llm-0: {{type: llm, provider: {provider}, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY,
          base_url: "http://127.0.0.1:9@2130706433:{port}/v1", prompt: "{{in-0}}"}}
outputs: {{out-0: llm-0}}
"""
            published = server.publish(text)
            assert published.status_code == 422, published.text
            [problem] = published.json()["detail"]
            assert problem["loc"] == ["nodes", "llm-0", "base_url"]
            ran = httpx.post(
                f"{server.base_url}/run_deployed_flow",
                params={"flow_id": f"grab-{provider}", "org": server.org},
                json={"in-0": "hi"},
                headers=server.auth(),
                timeout=30,
            )
            assert ran.status_code == 404, ran.text  # never stored, so nothing to run
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        stop_server(server)
        listener.close()
