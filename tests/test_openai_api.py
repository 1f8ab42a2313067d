"""The OpenAI-compatible face (flowserve.http.openai_api), driven by the official ``openai``
SDK against a real server: a model is a flow, the reply is the flow's chat output, streamed
as chunks or answered whole, and every error is one the SDK raises as its own class."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from flowserve.auth import PUBLIC
from flowserve.config import Settings
from flowserve.services import Services
from tests import sse
from tests.conftest import ROOT, Server, make_org

pytestmark = pytest.mark.slow

FLOWS = {
    "mapped": """
id: mapped
inputs:
  tone: {default: "calm"}
  question: {description: "the chat message"}
chat: {input: question, output: answer}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.01", prompt: "{tone} {question}"}
  tpl: {type: template, template: "not the answer: {tone}"}
outputs:
  first: tpl
  answer: llm-0
""",
    "memo": """
id: memo
inputs:
  in-0: {}
nodes:
  llm-0:
    type: llm
    provider: scripted
    model: "echo?history=1"
    prompt: "{in-0}"
    memory: {window: 5}
outputs:
  out-0: llm-0
""",
    "short": """
id: short
inputs:
  in-0: {}
nodes:
  llm-0: {type: llm, provider: scripted, model: echo, prompt: "{in-0}", max_tokens: 2}
outputs:
  out-0: llm-0
""",
    "slow": """
id: slow
inputs:
  in-0: {}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.1&repeat=100", prompt: "{in-0}"}
outputs:
  out-0: llm-0
""",
    "needs": """
id: needs
inputs:
  in-0: {}
  in-1: {description: "required, no default"}
  in-2: {}
  in-3: {default: "fine"}
nodes:
  t: {type: template, template: "{in-0} {in-1} {in-2} {in-3}"}
outputs:
  out-0: t
""",
    "quiet": """
id: quiet
nodes:
  t: {type: template, template: "nothing to ask"}
outputs:
  out-0: t
""",
}


@dataclass
class Other:
    org: str
    public: str
    private: str


@pytest.fixture(scope="module")
def other(server: Server) -> Other:
    """A second org with a flow of its own."""
    public, private = make_org(server.database_url, "other")
    text = "id: secret\ninputs: {in-0: {}}\nnodes: {t: {type: template, template: 's {in-0}'}}\n"
    r = httpx.post(
        f"{server.base_url}/v1/orgs/other/flows",
        content=text + "outputs: {out-0: t}\n",
        headers={"Authorization": f"Bearer {private}"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return Other("other", public, private)


@pytest.fixture(scope="module")
def flows(server: Server) -> None:
    for text in FLOWS.values():
        r = server.publish(text)
        assert r.status_code in (200, 201), r.text


def client(server: Server, key: str | None = None, **options: object) -> openai.OpenAI:
    settings: dict = {"max_retries": 0, "timeout": 60, **options}
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key=key or server.public_key, **settings
    )


def model(server: Server, flow_id: str) -> str:
    return f"{server.org}/{flow_id}"


def run_v0(server: Server, flow_id: str, inputs: dict[str, str]) -> dict:
    r = httpx.post(
        f"{server.base_url}/inference/v0/run/{server.org}/{flow_id}",
        json=inputs,
        headers=server.auth(),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def record(server: Server, flow_id: str, run_id: str) -> dict:
    r = httpx.get(
        f"{server.base_url}/inference/v0/run/{server.org}/{flow_id}/metadata",
        params={"run_id": run_id},
        headers=server.auth(server.private_key),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- answers -------------------------------------------------------------------------------


def test_the_reply_is_the_flows_chat_output(server: Server, flows: None) -> None:
    messages = [
        {"role": "system", "content": "ignored: the flow file decides the prompt"},
        {"role": "user", "content": "an earlier question"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": "what now"},
    ]
    raw = client(server).chat.completions.with_raw_response.create(
        model=model(server, "mapped"), messages=messages
    )
    answer = raw.parse()
    run_id = raw.headers["x-flowserve-run-id"]
    direct = run_v0(server, "mapped", {"question": "what now"})
    assert answer.choices[0].message.content == direct["outputs"]["answer"] == "calm what now"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "stop"
    assert len(answer.choices) == 1
    assert answer.id == f"chatcmpl-{run_id}"
    assert answer.object == "chat.completion"
    assert answer.model == model(server, "mapped")
    assert abs(answer.created - time.time()) < 60
    # The run is a run like the others: recorded, with the message in the chat input.
    row = record(server, "mapped", run_id)
    assert row["state"] == "COMPLETED"
    assert row["inputs"] == {"tone": "calm", "question": "what now"}
    assert row["outputs"]["answer"] == "calm what now"


def test_usage_is_summed_over_the_llm_nodes(server: Server, flows: None) -> None:
    answer = client(server).chat.completions.create(
        model=model(server, "chain"), messages=ask("one two three")
    )
    # chain: llm-0 says "A one two three", llm-1 "B friendly", llm-2 "C A one two three";
    # the scripted provider counts words, prompt and answer alike.
    assert answer.choices[0].message.content == "A one two three"
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 4 + 2 + 5
    assert answer.usage.completion_tokens == 4 + 2 + 5
    assert answer.usage.total_tokens == 22


def test_streamed_chunks_add_up_to_the_same_reply(server: Server, flows: None) -> None:
    text = "a b c d e f g h"
    whole = client(server).chat.completions.create(model=model(server, "echo"), messages=ask(text))
    with client(server).chat.completions.create(
        model=model(server, "echo"), messages=ask(text), stream=True
    ) as stream:
        run_id = stream.response.headers["x-flowserve-run-id"]
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        chunks = list(stream)
    assert whole.choices[0].message.content == text
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) > 3  # token by token, not one piece
    assert all(c.id == f"chatcmpl-{run_id}" for c in chunks)
    assert all(c.object == "chat.completion.chunk" and c.model == "acme/echo" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)  # not asked for


def test_include_usage_adds_a_last_chunk_with_usage_and_no_choices(
    server: Server, flows: None
) -> None:
    stream = client(server).chat.completions.create(
        model=model(server, "echo"),
        messages=ask("one two three"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 3)
    assert last.usage.total_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_the_raw_stream_is_openais_wire_format(server: Server, flows: None) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "acme/echo", "messages": ask("x y"), "stream": True},
        headers=server.auth(),
        timeout=30,
    )
    assert r.status_code == 200
    assert r.text.endswith("data: [DONE]\n\n")
    events = [m for m in sse.parse(r.text) if m.data != "[DONE]"]
    assert all(m.id is None for m in events)
    first = events[0].json()
    assert set(first) == {"id", "object", "created", "model", "system_fingerprint", "choices"}
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
         "finish_reason": None}
    ]  # fmt: skip


def test_a_reply_cut_at_the_flows_max_tokens_finishes_with_length(
    server: Server, flows: None
) -> None:
    answer = client(server).chat.completions.create(
        model=model(server, "short"), messages=ask("one two three four")
    )
    assert answer.choices[0].message.content == "one two"
    assert answer.choices[0].finish_reason == "length"
    chunks = list(
        client(server).chat.completions.create(
            model=model(server, "short"), messages=ask("one two three four"), stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length"


def test_text_parts_are_joined_and_unknown_fields_ignored(server: Server, flows: None) -> None:
    answer = client(server).chat.completions.create(
        model=model(server, "echo"),
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "first"}]},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
            },
        ],
        n=1,
        temperature=0.3,
        max_tokens=1,  # accepted and ignored: the flow file decides
        logprobs=False,
        extra_body={"parallel_tool_calls": False, "something_new": {"a": 1}},
    )
    assert answer.choices[0].message.content == "one\ntwo"


def test_a_version_can_be_named(server: Server, flows: None) -> None:
    first = server.publish(
        FLOWS["mapped"].replace("calm", "v1-tone").replace("mapped", "versioned")
    )
    second = server.publish(
        FLOWS["mapped"].replace("calm", "v2-tone").replace("mapped", "versioned")
    )
    v1, v2 = first.json()["version"], second.json()["version"]
    assert v2 == v1 + 1
    ai = client(server)
    for name, tone in ((f"acme/versioned@{v1}", "v1-tone"), ("acme/versioned", "v2-tone")):
        answer = ai.chat.completions.create(model=name, messages=ask("hi"))
        assert answer.choices[0].message.content == f"{tone} hi"
        assert answer.model == name
    with pytest.raises(openai.NotFoundError):
        ai.chat.completions.create(model=f"acme/versioned@{v2 + 1}", messages=ask("hi"))


def test_user_keys_the_flows_memory(server: Server, flows: None) -> None:
    ai = client(server)

    def say(user: str, text: str) -> str | None:
        answer = ai.chat.completions.create(model="acme/memo", messages=ask(text), user=user)
        return answer.choices[0].message.content

    assert say("alice", "hello there") == "hello there"
    # The second call sees the first exchange: the model got [user, assistant, user].
    assert say("alice", "again") == "hello there | hello there | again"
    assert say("bob", "again") == "again"  # another user, another memory
    stream = ai.chat.completions.create(
        model="acme/memo", messages=ask("third"), user="alice", stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    # memory: both of alice's exchanges, each (prompt, reply), then the new message
    first, second = ("hello there", "hello there"), ("again", "hello there | hello there | again")
    assert streamed == " | ".join([*first, *second, "third"])


def test_models_lists_the_flows_of_the_keys_org_only(
    server: Server, flows: None, other: Other
) -> None:
    listed = httpx.get(
        f"{server.base_url}/v1/orgs/acme/flows",
        headers=server.auth(server.private_key),
        timeout=30,
    ).json()
    models = client(server).models.list()
    assert [m.id for m in models.data] == [f"acme/{f['flow_id']}" for f in listed]
    assert {"acme/echo", "acme/mapped"} <= {m.id for m in models.data}
    assert all(m.object == "model" and m.owned_by == "acme" for m in models.data)
    assert all(abs(m.created - time.time()) < 3600 for m in models.data)
    theirs = client(server, other.public).models.list()
    assert [m.id for m in theirs.data] == ["other/secret"]
    raw = httpx.get(f"{server.base_url}/v1/models", headers=server.auth(), timeout=30).json()
    assert raw["object"] == "list"


def test_the_embedded_model_answers_as_through_the_stream_route(server: Server) -> None:
    content = "What is the capital of France?"
    r = httpx.post(
        f"{server.base_url}/stream_exported_flow",
        params={"flow_id": "local", "org": server.org},
        json={"in-0": content},
        headers=server.auth(),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    direct = [m.json() for m in sse.parse(r.text)][-1]["out-0"]
    ai = client(server, timeout=120)
    answer = ai.chat.completions.create(model="acme/local", messages=ask(content))
    stream = ai.chat.completions.create(
        model="acme/local",
        messages=ask(content),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert direct  # whatever the model says, it says something, the same each way
    assert answer.choices[0].message.content == direct
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


# -- errors --------------------------------------------------------------------------------


def test_a_bad_key_is_an_authentication_error(server: Server, flows: None) -> None:
    for key in ("fs-pub-aaaaaaaaaaaa-" + "x" * 30, "not-a-key"):
        ai = client(server, key)
        with pytest.raises(openai.AuthenticationError) as info:
            ai.chat.completions.create(model="acme/echo", messages=ask("hi"))
        assert info.value.status_code == 401
        assert info.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            ai.models.list()


def test_unknown_flows_and_other_orgs_flows_are_not_found(
    server: Server, flows: None, other: Other
) -> None:
    ai = client(server)
    answers = []
    for name in ("acme/nope", "other/secret", "gpt-4o", "acme/echo@99999", "acme/echo@0"):
        with pytest.raises(openai.NotFoundError) as info:
            ai.chat.completions.create(model=name, messages=ask("hi"))
        assert info.value.code == "model_not_found"
        assert info.value.param is None or info.value.param == "model"
        answers.append(info.value.message)
    # another org's flow is answered as an unknown one, word for word
    assert answers[0].replace("acme/nope", "X") == answers[1].replace("other/secret", "X")
    # and its own key runs it
    theirs = client(server, other.public).chat.completions.create(
        model="other/secret", messages=ask("hi")
    )
    assert theirs.choices[0].message.content == "s hi"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "system", "content": "no user message"}]}, "messages"),
        ({"messages": []}, "messages"),
        ({"n": 2}, "n"),
        ({"n": 0}, "n"),
        ({"temperature": 5}, "temperature"),
        ({"stream": "yes"}, "stream"),
        ({"user": "has spaces in it"}, "user"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.[0].role"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages.[0].content"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "messages.[0].content",
        ),
    ],
)
def test_a_bad_body_is_a_bad_request_naming_the_field(
    server: Server, flows: None, body: dict, param: str
) -> None:
    full = {"model": "acme/echo", "messages": ask("hi"), **body}
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(**full)  # type: ignore[call-overload]
    assert info.value.status_code == 400
    assert info.value.param == param
    assert info.value.type == "invalid_request_error"
    assert info.value.message


def test_a_body_that_is_not_json_is_a_bad_request(server: Server) -> None:
    for content in (b"", b"{", b"[]", b"\x0b"):
        r = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            content=content,
            headers={**server.auth(), "Content-Type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"


def test_inputs_a_message_cannot_fill_are_named(server: Server, flows: None) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(model="acme/needs", messages=ask("hi"))
    assert "'in-1', 'in-2'" in info.value.message
    assert "in-3" not in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(model="acme/quiet", messages=ask("hi"))
    assert "no input" in info.value.message


def test_too_large_and_wrong_method_are_openai_errors(server: Server, flows: None) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(server).chat.completions.create(model="acme/echo", messages=ask("x" * 1_100_000))
    assert info.value.status_code == 413
    assert info.value.code == "request_too_large"
    r = httpx.get(f"{server.base_url}/v1/chat/completions", headers=server.auth(), timeout=30)
    assert r.status_code == 405
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "POST" in r.headers["allow"]


def test_a_browser_origin_the_key_does_not_allow_is_permission_denied(
    server: Server, flows: None
) -> None:
    ai = client(server, default_headers={"Origin": "https://elsewhere.example"})
    with pytest.raises(openai.PermissionDeniedError) as info:
        ai.chat.completions.create(model="acme/echo", messages=ask("hi"))
    assert info.value.response.headers["access-control-allow-origin"] == (
        "https://elsewhere.example"
    )
    preflight = httpx.options(
        f"{server.base_url}/v1/chat/completions",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert preflight.status_code == 204


def _limited_key(server: Server, per_minute: int) -> str:
    async def go() -> str:
        services = Services.build(Settings(database_url=server.database_url))
        key = await services.keys.create_key(server.org, PUBLIC, rate_limit_per_minute=per_minute)
        await services.aclose()
        return key.token

    return asyncio.run(go())


def test_a_rate_limited_key_gets_a_rate_limit_error(server: Server, flows: None) -> None:
    ai = client(server, _limited_key(server, 1))
    ai.chat.completions.create(model="acme/echo", messages=ask("hi"))
    with pytest.raises(openai.RateLimitError) as info:
        ai.chat.completions.create(model="acme/echo", messages=ask("hi"))
    assert info.value.status_code == 429
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert info.value.code == "rate_limit_exceeded"


def test_a_run_that_fails_mid_stream_raises_while_iterating(server: Server, flows: None) -> None:
    # failing: its chat output (out-0) fails after three tokens
    stream = client(server).chat.completions.create(
        model="acme/failing", messages=ask("one two three four five six"), stream=True
    )
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert "scripted failure" in info.value.message
    assert "".join(got) == "one two three"
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "server_error"


def test_a_failed_run_is_a_server_error_not_retried(server: Server, flows: None) -> None:
    ai = client(server)
    with pytest.raises(openai.InternalServerError) as info:
        ai.chat.completions.create(model="acme/failing", messages=ask("one two three four"))
    response = info.value.response
    assert info.value.status_code == 502
    assert response.headers["x-should-retry"] == "false"
    assert "scripted failure" in info.value.message
    assert info.value.code == "provider_upstream_error"
    row = record(server, "failing", response.headers["x-flowserve-run-id"])
    assert row["state"] == "FAILED"


def test_a_client_that_leaves_the_stream_cancels_the_run(server: Server, flows: None) -> None:
    stream = client(server).chat.completions.create(
        model="acme/slow", messages=ask("word"), stream=True
    )
    run_id = stream.response.headers["x-flowserve-run-id"]
    chunks: Iterator = iter(stream)
    assert next(chunks).choices[0].delta.role == "assistant"
    assert next(chunks).choices[0].delta.content
    stream.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = httpx.get(
            f"{server.base_url}/inference/v0/run/acme/slow/metadata",
            params={"run_id": run_id},
            headers=server.auth(server.private_key),
            timeout=30,
        )
        if r.status_code == 200 and r.json()["state"] != "RUNNING":
            break
        time.sleep(0.1)
    row = r.json()
    assert row["state"] == "CANCELLED"
    assert 0 < len(row["outputs"]["out-0"]) < len("word " * 100)


def test_the_readme_example_runs(
    server: Server, flows: None, capsys: pytest.CaptureFixture[str]
) -> None:
    section = (ROOT / "README.md").read_text().split("## OpenAI-compatible endpoint", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = (
        code.replace("http://127.0.0.1:8000", server.base_url)
        .replace("fs-pub-…", server.public_key)
        .replace("default/support-bot", "acme/memo")  # it shows what it remembers
    )
    exec(compile(code, "README.md", "exec"), {})
    first, second = "How do I reset my password?", "And my email address?"
    assert capsys.readouterr().out == f"{first}\n{first} | {first} | {second}"


def test_the_document_declares_openai_errors(server: Server) -> None:
    document = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    operation = document["paths"]["/v1/chat/completions"]["post"]
    assert "400" in operation["responses"] and "422" not in operation["responses"]
    schema = operation["responses"]["401"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/OpenAIError"}
    assert json.dumps(document["paths"]["/v1/models"]["get"]).count("OpenAIError") > 0
