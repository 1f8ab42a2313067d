"""Two organisations on one server: a key of one can never run, read, stop or learn of
anything of the other (the same 401/404 whether the thing exists or not), and a public key
can never publish flows or read run records."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest

from flowserve.auth import PUBLIC
from tests.conftest import Server, make_org
from tests.security import Stream, add_key, record, stop

pytestmark = pytest.mark.slow

SLOW = """
id: {flow_id}
inputs: {{in-0: {{default: "one two three four five six seven eight nine ten"}}}}
nodes:
  llm-0: {{type: llm, provider: scripted, model: "echo?delay=0.2", prompt: "{prefix} {{in-0}}"}}
outputs: {{out-0: llm-0}}
"""
GARBAGE_KEY = "fs-priv-aaaaaaaaaaaa-" + "b" * 40


@dataclass
class Beta:
    org: str
    public: str
    private: str


def publish_to(server: Server, org: str, text: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/orgs/{org}/flows",
        content=text,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


@pytest.fixture(scope="module")
def beta(server: Server) -> Beta:
    public, private = make_org(server.database_url, "beta")
    assert server.publish(SLOW.format(flow_id="slow", prefix="acme")).status_code in (200, 201)
    # Beta has a flow of the same id as one of acme's, saying something else.
    r = publish_to(server, "beta", SLOW.format(flow_id="slow", prefix="beta"), private)
    assert r.status_code == 201, r.text
    beta_only = (
        "id: beta-only\ninputs: {in-0: {}}\n"
        "nodes: {t: {type: template, template: 'b {in-0}'}}\noutputs: {out-0: t}\n"
    )
    assert publish_to(server, "beta", beta_only, private).status_code == 201
    return Beta("beta", public, private)


def call(server: Server, method: str, path: str, key: str, body: object = None):
    return httpx.request(
        method,
        server.base_url + path,
        content=json.dumps(body) if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )


def test_running_another_orgs_flow_is_the_unknown_key_answer(server: Server, beta: Beta):
    unknown_org = call(server, "POST", "/run_deployed_flow?flow_id=echo&org=nope", beta.public)
    garbage = call(server, "POST", f"/run_deployed_flow?flow_id=echo&org={server.org}", GARBAGE_KEY)
    for key in (beta.public, beta.private):
        for path in (
            f"/run_deployed_flow?flow_id=echo&org={server.org}",
            f"/stream_exported_flow?flow_id=echo&org={server.org}",
            f"/inference/v0/run/{server.org}/echo",
            f"/inference/v0/stream/{server.org}/echo",
            f"/inference/v0/run/{server.org}/no-such-flow",
        ):
            r = call(server, "POST", path, key, {"in-0": "x"})
            assert r.status_code == 401
            assert r.json() == unknown_org.json() == garbage.json() == {"detail": "invalid API key"}


def test_another_orgs_flow_is_not_found_in_your_own_org(server: Server, beta: Beta):
    # acme's "echo" does not exist in beta: exactly the answer for a flow nobody has.
    theirs = call(server, "POST", "/inference/v0/run/beta/echo", beta.public, {"in-0": "x"})
    nobody = call(server, "POST", "/inference/v0/run/beta/zzz", beta.public, {"in-0": "x"})
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.json()["detail"].replace("echo", "zzz") == nobody.json()["detail"]
    # Same flow id, two orgs: each runs its own.
    acme = call(
        server,
        "POST",
        f"/run_deployed_flow?flow_id=slow&org={server.org}",
        server.public_key,
        {"in-0": "x"},
    )
    ours = call(
        server, "POST", "/run_deployed_flow?flow_id=slow&org=beta", beta.public, {"in-0": "x"}
    )
    assert acme.json() == {"out-0": "acme x"} and ours.json() == {"out-0": "beta x"}
    # And acme cannot see beta's flow either.
    r = call(
        server,
        "POST",
        f"/run_deployed_flow?flow_id=beta-only&org={server.org}",
        server.public_key,
        {"in-0": "x"},
    )
    assert r.status_code == 404


def test_run_records_of_another_org_cannot_be_read(server: Server, beta: Beta):
    run_id = call(
        server, "POST", f"/inference/v0/run/{server.org}/echo", server.public_key, {"in-0": "x"}
    ).json()["run_id"]
    assert record(server, "echo", run_id)["state"] == "COMPLETED"  # it exists
    # With beta's key under acme's org: the unknown-key answer.
    r = call(
        server, "GET", f"/inference/v0/run/{server.org}/echo/metadata?run_id={run_id}", beta.private
    )
    assert r.status_code == 401
    # Under beta's own org: exactly the answer for a run id nobody has.
    theirs = call(
        server, "GET", f"/inference/v0/run/beta/echo/metadata?run_id={run_id}", beta.private
    )
    nobody = call(
        server, "GET", f"/inference/v0/run/beta/echo/metadata?run_id={'0' * 32}", beta.private
    )
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.json()["detail"].replace(run_id, "0" * 32) == nobody.json()["detail"]


def test_runs_of_another_org_cannot_be_stopped(server: Server, beta: Beta):
    url = f"{server.base_url}/stream_exported_flow?flow_id=slow&org={server.org}"
    with Stream(url, server.public_key) as s:
        s.read_until(lambda s: len(s.messages()) >= 2)
        run_id = s.messages()[0].id.split(":")[0]
        assert stop(server, "slow", run_id, beta.private).status_code == 401
        theirs = stop(server, "slow", run_id, beta.private, org="beta")  # beta has a "slow" too
        nobody = stop(server, "slow", "0" * 32, beta.private, org="beta")
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.json()["detail"].replace(run_id, "0" * 32) == nobody.json()["detail"]
        s.read_to_end()
    assert s.messages()[-1].json() == {
        "out-0": "acme one two three four five six seven eight nine ten"
    }
    assert record(server, "slow", run_id)["state"] == "COMPLETED"


def test_a_public_key_cannot_stop_another_keys_run(server: Server):
    other = add_key(server.database_url, server.org, PUBLIC)
    url = f"{server.base_url}/stream_exported_flow?flow_id=slow&org={server.org}"
    with Stream(url, server.public_key) as s:
        s.read_until(lambda s: len(s.messages()) >= 2)
        run_id = s.messages()[0].id.split(":")[0]
        assert stop(server, "slow", run_id, other).status_code == 404
        assert stop(server, "slow", run_id, server.private_key).status_code == 200
        s.read_to_end()
    assert s.messages()[-1].json()["error_type"] == "cancelled"


def test_publishing_and_listing_stay_in_their_org(server: Server, beta: Beta):
    text = "id: intruder\nnodes: {t: {type: template, template: x}}\noutputs: {out-0: t}\n"
    assert server.publish(text, key=beta.private).status_code == 401  # to acme, as beta
    r = call(server, "GET", f"/v1/orgs/{server.org}/flows", beta.private)
    assert r.status_code == 401
    listed = {f["flow_id"] for f in call(server, "GET", "/v1/orgs/beta/flows", beta.private).json()}
    assert listed == {"slow", "beta-only"}
    acme = {
        f["flow_id"]
        for f in call(server, "GET", f"/v1/orgs/{server.org}/flows", server.private_key).json()
    }
    assert "beta-only" not in acme and "intruder" not in acme


def test_public_keys_cannot_publish_list_or_read_records(server: Server, beta: Beta):
    text = "id: sneaky\nnodes: {t: {type: template, template: x}}\noutputs: {out-0: t}\n"
    for org, key in ((server.org, server.public_key), ("beta", beta.public)):
        r = publish_to(server, org, text, key)
        assert r.status_code == 403 and r.json() == {
            "detail": "a private API key is needed to publish flows"
        }
        assert call(server, "GET", f"/v1/orgs/{org}/flows", key).status_code == 403
    run_id = call(
        server, "POST", f"/inference/v0/run/{server.org}/echo", server.public_key, {"in-0": "x"}
    ).json()["run_id"]
    r = call(
        server,
        "GET",
        f"/inference/v0/run/{server.org}/echo/metadata?run_id={run_id}",
        server.public_key,
    )
    assert r.status_code == 403


def test_conversation_memory_is_per_org(server: Server, beta: Beta):
    memo = """
id: memo-iso
inputs: {in-0: {}}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?history=1", prompt: "{in-0}",
          memory: {window: 5}}
outputs: {out-0: llm-0}
"""
    assert server.publish(memo).status_code in (200, 201)
    assert publish_to(server, "beta", memo, beta.private).status_code in (200, 201)
    acme = f"/run_deployed_flow?flow_id=memo-iso&org={server.org}"
    ours = "/run_deployed_flow?flow_id=memo-iso&org=beta"
    body = {"in-0": "secret-plan", "user_id": "ann"}
    assert call(server, "POST", acme, server.public_key, body).json()["out-0"] == "secret-plan"
    # Same user id in beta: none of acme's history.
    r = call(server, "POST", ours, beta.public, {"in-0": "hello", "user_id": "ann"})
    assert r.json()["out-0"] == "hello"
