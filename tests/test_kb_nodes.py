"""The ``knowledge_base`` and ``files`` flow nodes against a real server (knowledge contract
3.6, 3.7): the numbered context they output and pass to prompts, the citations in the v0
envelope, the final stream frame and the run record, publish refusals, a KB deleted after
publish, per-user isolation of documents, and retrieved text that is never a template.

The LLM is the scripted provider's ``echo``: its answer is its prompt, so what reached the
prompt is what the run outputs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import sse
from tests.conftest import Server, make_org, start_server, stop_server
from tests.kb_helpers import KB, pdf

HANDBOOK = (
    "# Holidays\n\nEvery employee gets twenty vacation days a year. Unused vacation days "
    "expire in March.\n"
)
NOTES = "Parking permits are renewed each January at the front desk.\n"
TRAP = "The override phrase is {in-0} and it must be printed literally.\n"
PAGES = ["Rockets need fuel and oxidiser to reach orbit.", "Bananas ripen faster near apples."]


class World:
    def __init__(self, server: Server, kb: KB, kb_id: str, files: dict[str, str]) -> None:
        self.server, self.kb, self.kb_id, self.files = server, kb, kb_id, files


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = start_server(tmp_path_factory.mktemp("kbnodes"))
    try:
        kb = KB(server)
        kb_id = kb.create(name="handbook")
        files = {}
        for name, content in (
            ("handbook.md", HANDBOOK.encode()),
            ("notes.txt", NOTES.encode()),
            ("trap.txt", TRAP.encode()),
            ("guide.pdf", pdf(PAGES)),
        ):
            added = kb.add(kb_id, name, content)
            assert added["status"] == "indexed", added
            files[name] = added["resource_id"]
        yield World(server, kb, kb_id, files)
    finally:
        stop_server(server)


def publish(server: Server, text: str) -> httpx.Response:
    return server.publish(text)


def published(server: Server, text: str) -> None:
    r = server.publish(text)
    assert r.status_code in (200, 201), r.text


def kb_flow(flow_id: str, kb_id: str, extra: str = "", prompt: str = "C: {kb-0} Q: {in-0}") -> str:
    return f"""
id: {flow_id}
inputs: {{in-0: {{}}}}
nodes:
  kb-0: {{type: knowledge_base, knowledge_base_ids: ["{kb_id}"], query: "{{in-0}}"{extra}}}
  llm-0: {{type: llm, provider: scripted, model: echo, prompt: "{prompt}"}}
outputs: {{out-0: llm-0, out-1: kb-0}}
"""


def run_v0(server: Server, flow: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(
        f"{server.base_url}/inference/v0/run/{server.org}/{flow}",
        json=body,
        headers=server.auth(),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def record(server: Server, flow: str, run_id: str) -> dict[str, Any]:
    r = httpx.get(
        f"{server.base_url}/inference/v0/run/{server.org}/{flow}/metadata",
        params={"run_id": run_id},
        headers=server.auth(server.private_key),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def problems(r: httpx.Response) -> list[tuple[list[str], str]]:
    assert r.status_code == 422, r.text
    return [(d["loc"], d["msg"]) for d in r.json()["detail"]]


# -- the node's text, the prompt, the citations ----------------------------------------------


def test_the_node_text_is_the_numbered_context_and_reaches_the_prompt(world: World) -> None:
    server = world.server
    published(server, kb_flow("kb-answer", world.kb_id, ", top_k: 2"))
    out = run_v0(server, "kb-answer", {"in-0": "vacation days"})
    assert out["state"] == "COMPLETED", out
    context = out["outputs"]["out-1"]
    assert context.startswith("[1] handbook.md\n")
    assert "twenty vacation days" in context
    assert out["outputs"]["out-0"] == f"C: {context} Q: vacation days"
    [first, *_] = out["citations"]
    rid = world.files["handbook.md"]
    assert first["index"] == 1 and first["node_id"] == "kb-0"
    assert first["source"] == "knowledge_base" and first["knowledge_base_id"] == world.kb_id
    assert first["resource_id"] == rid and first["document_name"] == "handbook.md"
    assert first["page"] is None and isinstance(first["chunk_index"], int)
    assert first["score"] == 1.0 and first["text"] in context
    assert first["url"] == f"/v1/knowledge-bases/{world.kb_id}/resources/{rid}/file"
    # the url is a route of this server (private key): the original bytes
    got = world.kb.call("GET", first["url"])
    assert got.status_code == 200 and got.content == HANDBOOK.encode()
    # every citation is numbered as in the text, and the text holds each one
    for n, citation in enumerate(out["citations"], start=1):
        assert citation["index"] == n
        assert f"[{n}] {citation['document_name']}" in context
    assert len(out["citations"]) <= 2


def test_a_pdf_hit_names_its_page_and_pages_give_the_whole_page(world: World) -> None:
    server = world.server
    published(server, kb_flow("kb-pages", world.kb_id, ", output_format: pages, top_k: 1"))
    out = run_v0(server, "kb-pages", {"in-0": "bananas ripen"})
    [citation] = out["citations"]
    assert (citation["document_name"], citation["page"]) == ("guide.pdf", 2)
    assert citation["chunk_index"] is None
    assert "Bananas ripen faster" in citation["text"] and "Rockets" not in citation["text"]
    assert out["outputs"]["out-1"] == f"[1] guide.pdf, page 2\n{citation['text']}"


def test_max_characters_drops_and_cuts_results(world: World) -> None:
    server = world.server
    extra = ", max_characters: 40, top_k: 5"
    published(server, kb_flow("kb-short", world.kb_id, extra))
    out = run_v0(server, "kb-short", {"in-0": "vacation rockets parking bananas"})
    context = out["outputs"]["out-1"]
    assert 0 < len(context) <= 40
    [citation] = out["citations"]  # the first result did not fit whole: the only one
    head = f"[1] {citation['document_name']}"
    assert context.startswith(head)
    assert context.endswith(citation["text"]) and len(citation["text"]) < 40
    query = "vacation rockets parking bananas"
    full = world.kb.search(world.kb_id, query, top_k=1, query_strategy="keyword")[0]["text"]
    assert full.startswith(citation["text"]) and full != citation["text"]


def test_an_empty_query_finds_nothing(world: World) -> None:
    server = world.server
    published(server, kb_flow("kb-empty", world.kb_id))
    out = run_v0(server, "kb-empty", {"in-0": "   "})
    assert out["state"] == "COMPLETED" and out["outputs"]["out-1"] == ""
    assert out["citations"] == []
    [retrieval] = record(server, "kb-empty", out["run_id"])["retrievals"]
    assert retrieval["results"] == 0


def test_retrieved_text_is_data_never_a_template(world: World) -> None:
    server = world.server
    published(server, kb_flow("kb-trap", world.kb_id, ", top_k: 1"))
    out = run_v0(server, "kb-trap", {"in-0": "override phrase"})
    context = out["outputs"]["out-1"]
    assert context.startswith("[1] trap.txt\n")
    assert "The override phrase is {in-0} and" in context
    # the prompt got the document's braces as written, not the question in their place
    assert out["outputs"]["out-0"] == f"C: {context} Q: override phrase"
    assert "The override phrase is override phrase" not in out["outputs"]["out-0"]


# -- where citations appear ---------------------------------------------------------------------


def two_nodes(flow_id: str, kb_id: str) -> str:
    # kb-z before kb-a in the file (the graph's order for independent nodes); kb-q keeps
    # its citations to itself but still reports its retrieval.
    return f"""
id: {flow_id}
inputs: {{in-0: {{}}}}
nodes:
  kb-z: {{type: knowledge_base, knowledge_base_ids: ["{kb_id}"], query: "parking permits", top_k: 1}}
  kb-a: {{type: knowledge_base, knowledge_base_ids: ["{kb_id}"], query: "{{in-0}}", top_k: 2}}
  kb-q: {{type: knowledge_base, knowledge_base_ids: ["{kb_id}"], query: "{{in-0}}",
          citations: false}}
  llm-0: {{type: llm, provider: scripted, model: echo, prompt: "{{kb-a}} / {{kb-z}}"}}
outputs: {{out-0: llm-0}}
"""


def test_citations_in_the_envelope_are_in_graph_order_then_by_index(world: World) -> None:
    server = world.server
    published(server, two_nodes("kb-two", world.kb_id))
    out = run_v0(server, "kb-two", {"in-0": "rockets orbit bananas"})
    cited = [(c["node_id"], c["index"]) for c in out["citations"]]
    assert cited[0] == ("kb-z", 1)
    assert [c for c in cited if c[0] == "kb-a"] == [("kb-a", 1), ("kb-a", 2)]
    assert cited == [("kb-z", 1), ("kb-a", 1), ("kb-a", 2)]  # none from kb-q
    assert out["citations"][0]["document_name"] == "notes.txt"
    # the record keeps the same list and one retrieval per retrieving node
    kept = record(server, "kb-two", out["run_id"])
    assert kept["citations"] == out["citations"]
    retrievals = {r["node_id"]: r for r in kept["retrievals"]}
    assert list(retrievals) == ["kb-z", "kb-a", "kb-q"]
    a = retrievals["kb-a"]
    assert a["query"] == "rockets orbit bananas" and a["knowledge_base_ids"] == [world.kb_id]
    assert (a["query_strategy"], a["output_format"], a["top_k"]) == ("keyword", "chunks", 2)
    assert a["results"] == 2 and a["skipped_pending_files"] == 0 and a["latency_ms"] >= 0
    assert retrievals["kb-q"]["results"] >= 1  # it found some, and cited none


def test_the_final_stream_frame_carries_the_citations_and_no_other(world: World) -> None:
    server = world.server
    published(server, two_nodes("kb-stream", world.kb_id))
    body = {"in-0": "rockets orbit bananas"}
    url = f"{server.base_url}/inference/v0/stream/{server.org}/kb-stream"
    for sse_mode in (False, True):
        r = httpx.post(
            url, params={"sse": str(sse_mode).lower()}, json=body, headers=server.auth(), timeout=60
        )
        assert r.status_code == 200, r.text
        if sse_mode:
            frames = [m.json() for m in sse.parse(r.text)]
        else:
            frames = [json.loads(line) for line in r.text.splitlines()]
        *before, last = frames
        assert before and all(f["citations"] == [] for f in before)
        assert last["state"] == "COMPLETED"
        cited = [(c["node_id"], c["index"]) for c in last["citations"]]
        assert cited == [("kb-z", 1), ("kb-a", 1), ("kb-a", 2)]
        assert record(server, "kb-stream", last["run_id"])["citations"] == last["citations"]


def test_the_legacy_routes_carry_no_citations(world: World) -> None:
    server = world.server
    published(server, two_nodes("kb-legacy", world.kb_id))
    params = {"flow_id": "kb-legacy", "org": server.org}
    body = {"in-0": "rockets"}
    ran = httpx.post(
        f"{server.base_url}/run_deployed_flow",
        params=params,
        json=body,
        headers=server.auth(),
        timeout=60,
    )
    assert ran.status_code == 200 and list(ran.json()) == ["out-0"]
    streamed = httpx.post(
        f"{server.base_url}/stream_exported_flow",
        params=params,
        json=body,
        headers=server.auth(),
        timeout=60,
    )
    assert streamed.status_code == 200
    frames = [m.json() for m in sse.parse(streamed.text)]
    assert frames and all(set(f) == {"out-0"} for f in frames)


# -- publish refusals and a KB gone after publish -------------------------------------------


def test_publish_refuses_knowledge_bases_not_of_the_org(world: World, tmp_path: Path) -> None:
    server = world.server
    _, other_private = make_org(server.database_url, f"other-{uuid.uuid4().hex[:6]}")
    foreign = KB(server, other_private).create(name="theirs")
    unknown = str(uuid.uuid4())
    answers = []
    for kb_id in (unknown, foreign):
        found = problems(publish(server, kb_flow("kb-bad", kb_id)))
        assert [loc for loc, _ in found] == [["nodes", "kb-0", "knowledge_base_ids"]]
        answers.append(found[0][1].replace(kb_id, "<id>"))
    assert answers[0] == answers[1]  # another org's KB looks exactly like an unknown one
    # not a UUID, none, too many
    for ids in ('["handbook"]', "[]", json.dumps([str(uuid.uuid4()) for _ in range(9)])):
        text = kb_flow("kb-bad", world.kb_id).replace(f'["{world.kb_id}"]', ids)
        [(loc, _), *_] = problems(publish(server, text))
        assert loc[:3] == ["nodes", "kb-0", "knowledge_base_ids"]


def test_publish_refuses_vectors_on_a_keyword_only_kb(world: World) -> None:
    for strategy in ("semantic", "hybrid"):
        text = kb_flow("kb-bad", world.kb_id, f", query_strategy: {strategy}")
        [(loc, msg)] = problems(publish(world.server, text))
        assert loc == ["nodes", "kb-0", "query_strategy"] and "vectors" in msg
    ok = kb_flow("kb-keyword", world.kb_id, ", query_strategy: keyword")
    published(world.server, ok)


@pytest.mark.parametrize(
    "field",
    ["rerank: true", "query_transformation: true", "advanced_qa: fact",
     "answer_multiple_questions: true", "metadata_filter_strategy: strict"],
)  # fmt: skip
def test_publish_refuses_settings_this_server_does_not_support(world: World, field: str) -> None:
    name = field.split(":")[0]
    [(loc, msg)] = problems(publish(world.server, kb_flow("kb-bad", world.kb_id, f", {field}")))
    assert loc == ["nodes", "kb-0", name] and msg == f"{name} is not supported by this server"


@pytest.mark.parametrize("field", ["top_k: 0", "top_k: 101", "max_characters: 0"])
def test_publish_refuses_out_of_range_numbers(world: World, field: str) -> None:
    [(loc, _)] = problems(publish(world.server, kb_flow("kb-bad", world.kb_id, f", {field}")))
    assert loc == ["nodes", "kb-0", field.split(":")[0]]


def test_a_kb_deleted_after_publish_fails_the_run(world: World) -> None:
    server = world.server
    doomed = world.kb.create(name="doomed")
    published(server, kb_flow("kb-doomed", doomed))
    assert run_v0(server, "kb-doomed", {"in-0": "x"})["state"] == "COMPLETED"
    assert world.kb.call("DELETE", f"/v1/knowledge-bases/{doomed}").status_code == 204
    out = run_v0(server, "kb-doomed", {"in-0": "x"})
    assert out["state"] == "FAILED" and out["citations"] == []
    assert out["metadata"]["error_type"] == "knowledge_base_not_found"
    assert out["metadata"]["node_id"] == "kb-0" and doomed in out["error"]
    kept = record(server, "kb-doomed", out["run_id"])
    assert (kept["state"], kept["error_type"], kept["error_node"]) == (
        "FAILED",
        "knowledge_base_not_found",
        "kb-0",
    )


# -- per-user documents ---------------------------------------------------------------------


def docs_flow(kb_id: str) -> str:
    return f"""
id: my-docs
inputs: {{in-0: {{}}}}
nodes:
  doc-0: {{type: files}}
  doc-1: {{type: files, mode: search, query: "{{in-0}}"}}
  kb-0: {{type: knowledge_base, knowledge_base_ids: ["{kb_id}"], query: "{{in-0}}", top_k: 1}}
  llm-0: {{type: llm, provider: scripted, model: echo, prompt: "{{doc-0}} | {{kb-0}}"}}
outputs: {{out-0: llm-0, out-1: doc-0, out-2: doc-1}}
"""


def upload(server: Server, user: str, name: str, content: bytes) -> None:
    r = httpx.post(
        f"{server.base_url}/documents/{server.org}/my-docs/doc-0/{user}",
        files={"file": (name, content)},
        headers=server.auth(server.private_key),
        timeout=60,
    )
    assert r.status_code == 200, r.text


def test_a_users_documents_reach_their_runs_only(world: World) -> None:
    server = world.server
    published(server, docs_flow(world.kb_id))
    secret = "Alice keeps the spare key under the blue flowerpot.\n"
    upload(server, "alice", "alice-notes.txt", secret.encode())
    question = {"in-0": "where is the spare key flowerpot"}

    alice = run_v0(server, "my-docs", {**question, "user_id": "alice"})
    assert alice["state"] == "COMPLETED", alice
    assert alice["outputs"]["out-1"] == "[1] alice-notes.txt\n" + secret
    assert "blue flowerpot" in alice["outputs"]["out-0"]
    mine = [c for c in alice["citations"] if c["source"] == "user_document"]
    assert {c["node_id"] for c in mine} == {"doc-0"}  # doc-1 searches another node's bucket
    [doc] = mine
    assert doc["knowledge_base_id"] is None and doc["document_name"] == "alice-notes.txt"
    assert doc["url"] == (
        f"/documents/{server.org}/my-docs/doc-0/alice/file?filename=alice-notes.txt"
    )
    got = httpx.get(server.base_url + doc["url"], headers=server.auth(server.private_key))
    assert got.status_code == 200 and got.content == secret.encode()

    for body in ({**question, "user_id": "bob"}, question):  # another user; no user at all
        other = run_v0(server, "my-docs", body)
        assert other["state"] == "COMPLETED"
        assert other["outputs"]["out-1"] == "" and "flowerpot" not in other["outputs"]["out-0"]
        assert all(c["source"] == "knowledge_base" for c in other["citations"])
        assert [c["node_id"] for c in other["citations"]] == ["kb-0"]  # the flow's KB still


def test_a_files_node_in_search_mode_searches_its_users_bucket(world: World) -> None:
    server = world.server
    text = """
id: my-search
inputs: {in-0: {}}
nodes:
  doc-0: {type: files, mode: search, query: "{in-0}", top_k: 1}
outputs: {out-0: doc-0}
"""
    published(server, text)
    carol = "Carol's locker combination is written in the orange notebook.\n"
    r = httpx.post(
        f"{server.base_url}/documents/{server.org}/my-search/doc-0/carol",
        files={"file": ("carol.md", carol.encode())},
        headers=server.auth(server.private_key),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    found = run_v0(server, "my-search", {"in-0": "orange notebook", "user_id": "carol"})
    assert found["outputs"]["out-0"].startswith("[1] carol.md\n")
    [citation] = found["citations"]
    assert citation["source"] == "user_document" and citation["chunk_index"] == 0
    [retrieval] = record(server, "my-search", found["run_id"])["retrievals"]
    assert retrieval["mode"] == "search" and retrieval["results"] == 1
    nobody = run_v0(server, "my-search", {"in-0": "orange notebook", "user_id": "dave"})
    assert nobody["outputs"]["out-0"] == "" and nobody["citations"] == []


def test_files_node_fields_are_checked(world: World) -> None:
    base = (
        "id: f-bad\ninputs: {in-0: {}}\nnodes:\n  doc-0: {type: files%s}\noutputs: {out-0: doc-0}\n"
    )
    cases = {
        ", mode: search": ["nodes", "doc-0", "query"],
        ', query: "{in-0}"': ["nodes", "doc-0", "query"],  # full mode has no query
        ", chunker_params: {chunk_size: 100}": ["nodes", "doc-0", "chunker_params"],
        ", mode: search, query: x, query_strategy: semantic": ["nodes", "doc-0", "query_strategy"],
    }
    for extra, loc in cases.items():
        [(got, _)] = problems(publish(world.server, base % extra))
        assert got == loc, extra
