"""Node types are plugins (flowserve.nodes): a third-party type, registered through a real
``flowserve.nodes`` entry point, is parsed, checked at compile and at publish, and run like
the built-in ones, its results kept with the run.

The third-party distribution is a directory on ``sys.path`` (``PYTHONPATH`` for a server)
holding its module and its ``.dist-info`` with ``entry_points.txt``: what ``pip install``
would leave, found by the same ``importlib.metadata`` lookup, without touching the venv."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from flowserve.auth import PUBLIC, Principal
from flowserve.errors import ConfigError, FlowValidationError, NotFoundError
from flowserve.events import NodeCompleted, NodeDelta, NodeResults, NodeStarted, RunFinished
from flowserve.flows import Flow, compile_flow, parse_flow_text
from flowserve.flows.service import FlowService, LoadedFlow
from flowserve.nodes.base import NodeSpec, NodeType
from flowserve.nodes.llm import LLMNode
from flowserve.nodes.registry import NodeRegistry, installed
from flowserve.nodes.template import TemplateNode
from flowserve.providers.resilience import RetryPolicy
from flowserve.runs.runner import Runner
from flowserve.runs.service import RunService
from flowserve.store.database import Database
from flowserve.store.flows import FlowStore
from flowserve.store.keys import KeyStore
from tests.conftest import Server, start_server, stop_server
from tests.helpers import registry

PLUGIN = '''
"""A third-party node type: its text, upper-cased, streamed word by word."""

from collections.abc import AsyncIterator
from typing import Literal

import anyio
import anyio.lowlevel
from pydantic import Field

from flowserve.nodes.base import Compiled, NodeResults, NodeSpec, NodeType, Stream


class ShoutSpec(NodeSpec):
    type: Literal["shout"]
    text: str
    times: int = Field(default=1, ge=1, le=5)
    pause: float = Field(default=0.0, ge=0, le=5)  # seconds before each word
    timeout: float | None = Field(default=None, gt=0)
    catalog: str | None = None  # must be an entry of the org's catalog (checked at publish)


class ShoutNode(NodeType[ShoutSpec]):
    name = "shout"
    Spec = ShoutSpec
    templates = ("text",)

    def compile(self, spec, ctx):
        if not spec.text.strip():
            ctx.problem("text", "must not be empty")
        return Compiled(data=spec.times)

    async def check(self, spec, ctx):
        if spec.catalog is not None:
            catalog = ctx.services.get("catalog")
            if catalog is None or not await catalog.has(ctx.org_id, spec.catalog):
                ctx.problem("catalog", f"no entry {spec.catalog!r} in {ctx.org_id!r}")

    async def run(self, node, ctx) -> AsyncIterator[object]:
        text = ctx.render("text").upper()
        yield NodeResults(node.id, [{"index": 1, "node_id": node.id, "text": text}])
        yield Stream(_words(text, node.data, node.spec.pause), node.spec.timeout)
        ctx.usage = {"words": len(ctx.text().split())}


async def _words(text, times, pause):
    words = (" ".join([text] * times)).split(" ")
    for i, word in enumerate(words):
        await anyio.sleep(pause)
        yield word if i == 0 else " " + word
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The third-party distribution ``shout-nodes``, importable while the module runs."""
    installed()  # the default registry (cached) is the installed types', without this one
    root = tmp_path_factory.mktemp("site")
    (root / "shout_nodes.py").write_text(PLUGIN)
    info = root / "shout_nodes-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-nodes\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[flowserve.nodes]\nshout = shout_nodes:ShoutNode\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        yield root
        sys.modules.pop("shout_nodes", None)


@pytest.fixture
def types(plugin_path: Path) -> NodeRegistry:
    return NodeRegistry.from_entry_points()


def compiled(text: str, types: NodeRegistry) -> Flow:
    spec = parse_flow_text(textwrap.dedent(text), types)
    return compile_flow(spec, registry(), types)


SHOUT = """
    id: shouting
    inputs: {in-0: {}}
    nodes:
      s: {type: shout, text: "{in-0}", times: 2}
      l: {type: llm, provider: scripted, prompt: "heard: {s}"}
    outputs: {out-0: s, out-1: l}
"""


# --- registration ---------------------------------------------------------------------------


def test_the_built_in_types_are_the_installed_distributions_entry_points() -> None:
    group = distribution("flowserve").entry_points.select(group="flowserve.nodes")
    assert {ep.name: ep.value for ep in group} == {
        "llm": "flowserve.nodes.llm:LLMNode",
        "template": "flowserve.nodes.template:TemplateNode",
        "knowledge_base": "flowserve.nodes.knowledge_base:KnowledgeBaseNode",
        "files": "flowserve.nodes.files:FilesNode",
    }
    types = NodeRegistry.from_entry_points()
    assert isinstance(types.get("llm"), LLMNode)
    assert isinstance(types.get("template"), TemplateNode)


def test_the_runner_and_the_graph_name_no_node_type() -> None:
    source = Path(__file__).resolve().parent.parent / "src" / "flowserve"
    for path in ("runs/runner.py", "flows/graph.py", "flows/spec.py", "flows/loader.py"):
        text = (source / path).read_text()
        for name in ('"llm"', '"template"', "LLMNode", "TemplateNode", "is_llm"):
            assert name not in text, (path, name)


def test_a_third_party_type_is_found_by_its_entry_point(types: NodeRegistry) -> None:
    assert types.names() == ["files", "knowledge_base", "llm", "shout", "template"]
    f = compiled(SHOUT, types)
    assert f.nodes["s"].kind is types.get("shout")
    assert f.nodes["l"].deps == ("s",)  # its template's {names} are edges like any other
    assert f.order == ("s", "l")
    assert f.nodes["s"].provider is None and f.nodes["l"].provider == "scripted"


def test_a_registry_refuses_a_type_twice_or_without_its_tag() -> None:
    with pytest.raises(ConfigError, match="registered twice"):
        NodeRegistry([LLMNode(), LLMNode()])

    class Untagged(NodeSpec):
        text: str

    class Bad(NodeType[Untagged]):
        name = "bad"
        Spec = Untagged

    with pytest.raises(ConfigError, match=r"needs type: Literal\['bad'\]"):
        NodeRegistry([Bad()])


# --- the flow file --------------------------------------------------------------------------


def test_an_unknown_or_missing_type_names_the_node_and_the_known_types() -> None:
    with pytest.raises(FlowValidationError) as info:
        built_in = NodeRegistry([LLMNode(), TemplateNode()])
        compiled(
            """
            id: f
            nodes:
              a: {type: nope, text: hi}
              b: {prompt: hi}
            outputs: {out-0: a}
            """,
            built_in,
        )
    assert info.value.problems == [
        ("nodes.a.type", "unknown node type 'nope' (known: llm, template)"),
        ("nodes.b.type", "a node needs a type (known: llm, template)"),
    ]


def test_a_plugins_fields_are_checked_by_its_spec_and_its_compile_step(
    types: NodeRegistry,
) -> None:
    with pytest.raises(FlowValidationError) as info:
        compiled(
            """
            id: f
            nodes:
              a: {type: shout, text: "  ", times: 9}
            outputs: {out-0: a}
            """,
            types,
        )
    assert info.value.problems == [("nodes.a.times", "Input should be less than or equal to 5")]
    with pytest.raises(FlowValidationError) as info:
        compiled(
            """
            id: f
            nodes:
              a: {type: shout, text: "  "}
              b: {type: shout, text: "{zzz}"}
            outputs: {out-0: a, out-1: b}
            """,
            types,
        )
    assert info.value.problems == [
        ("nodes.b.text", "unknown reference {zzz}"),
        ("nodes.a.text", "must not be empty"),
    ]


class Catalog:
    """What the composition root would pass to node types: entries per organisation."""

    def __init__(self, entries: dict[str, set[str]]) -> None:
        self.entries = entries
        self.asked: list[tuple[str, str]] = []

    async def has(self, org_id: str, entry: str) -> bool:
        await anyio.lowlevel.checkpoint()
        self.asked.append((org_id, entry))
        return entry in self.entries.get(org_id, set())


@pytest.mark.anyio
async def test_a_plugins_async_check_refuses_a_publish(types: NodeRegistry, tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'flows.db'}")
    await db.create_schema()
    for org in ("acme", "other"):
        await KeyStore(db).create_org(org)
    catalog = Catalog({"acme": {"greetings"}})
    flows = FlowService(
        FlowStore(db), registry(), 0, nodes=types, node_services={"catalog": catalog}
    )
    text = "id: f\nnodes: {s: {type: shout, text: hi, catalog: %s}}\noutputs: {out-0: s}\n"
    try:
        with pytest.raises(FlowValidationError) as info:
            await flows.publish("acme", text % "farewells")
        assert info.value.problems == [("nodes.s.catalog", "no entry 'farewells' in 'acme'")]
        with pytest.raises(FlowValidationError):  # another org's entry is not this one's
            await flows.publish("other", text % "greetings")
        with pytest.raises(NotFoundError):  # nothing was stored
            await flows.store.get("acme", "f", None)
        stored, _ = await flows.publish("acme", text % "greetings")
        assert stored.version == 1
        loaded = await flows.get("acme", "f")  # read back by the same node types
        assert loaded.flow.nodes["s"].kind is types.get("shout")
        assert catalog.asked == [
            ("acme", "farewells"),
            ("other", "greetings"),
            ("acme", "greetings"),
        ]
    finally:
        await db.aclose()


# --- running --------------------------------------------------------------------------------


class Store:
    """RunStore's two writes, kept."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    async def start(self, values: dict[str, Any]) -> None:
        self.rows[values["id"]] = dict(values)

    async def finish(self, run_id: str, **fields: Any) -> None:
        self.rows[run_id].update(fields)


@pytest.mark.anyio
async def test_a_plugins_results_and_usage_are_kept_with_the_run(types: NodeRegistry) -> None:
    store = Store()
    runner = Runner(registry(), RetryPolicy(max_retries=0))
    runs = RunService(store, None, runner, owner="me", record_delay=0.0)  # type: ignore[arg-type]
    who = Principal(org_id="acme", key_id="k1", kind=PUBLIC)
    run = runs.create(who, LoadedFlow("acme", 1, compiled(SHOUT, types)), {"in-0": "hi there"})
    seen = []
    async with run.session():
        async for event in run.events():
            seen.append(event)
    kinds = [(type(e).__name__, getattr(e, "node_id", None)) for e in seen]
    assert kinds[:2] == [("NodeStarted", "s"), ("NodeResults", "s")]
    s_deltas = [e.text for e in seen if isinstance(e, NodeDelta) and e.node_id == "s"]
    assert s_deltas == ["HI", " THERE", " HI", " THERE"]  # relayed chunk by chunk
    assert run.outputs() == {"out-0": "HI THERE HI THERE", "out-1": "heard: HI THERE HI THERE"}
    assert run.state == "COMPLETED"
    assert run.results is not None
    assert run.results["s"].citations == [{"index": 1, "node_id": "s", "text": "HI THERE"}]
    done = {e.node_id: e for e in seen if isinstance(e, NodeCompleted)}
    assert done["s"].usage == {"words": 4}
    assert store.rows[run.id]["usage"]["s"] == {"words": 4}
    assert store.rows[run.id]["nodes"]["s"]["state"] == "COMPLETED"


@pytest.mark.anyio
async def test_a_plugin_stream_past_its_time_limit_fails_the_node(types: NodeRegistry) -> None:
    f = compiled(
        """
        id: slow
        inputs: {in-0: {}}
        nodes:
          s: {type: shout, text: "{in-0}", pause: 0.1, timeout: 0.25}
        outputs: {out-0: s}
        """,
        types,
    )
    runner = Runner(registry(), RetryPolicy(max_retries=0))
    async with runner.start(f, {"in-0": "a b c d e f"}) as events:
        seen = [e async for e in events]
    final = seen[-1]
    assert isinstance(final, RunFinished) and final.state == "FAILED", final
    assert final.node_id == "s" and final.error == "node s: stream did not complete within 0.25s"
    deltas = [e.text for e in seen if isinstance(e, NodeDelta)]
    assert 1 <= len(deltas) < 6  # some words came, then the limit cut the stream
    assert [type(e) for e in seen[:2]] == [NodeStarted, NodeResults]


# --- in a real server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_server(plugin_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("plugin-server"), env={"PYTHONPATH": str(plugin_path)}
    )
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.mark.slow
def test_a_server_publishes_and_streams_a_third_party_node(plugin_server: Server) -> None:
    srv = plugin_server
    published = srv.publish(textwrap.dedent(SHOUT))
    assert published.status_code == 201, published.text
    with httpx.stream(
        "POST",
        f"{srv.base_url}/stream_exported_flow",
        params={"flow_id": "shouting", "org": srv.org, "delta": "true"},
        json={"in-0": "hello you"},
        headers=srv.auth(),
        timeout=30,
    ) as response:
        assert response.status_code == 200
        frames = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert len(frames) > 2  # the plugin's words arrived as separate messages
    body = httpx.post(
        f"{srv.base_url}/inference/v0/run/{srv.org}/shouting",
        json={"in-0": "hello you"},
        headers=srv.auth(),
        timeout=30,
    ).json()
    assert body["state"] == "COMPLETED", body
    assert body["outputs"] == {
        "out-0": "HELLO YOU HELLO YOU",
        "out-1": "heard: HELLO YOU HELLO YOU",
    }
    unknown = srv.publish("id: f\nnodes: {a: {type: whisper}}\noutputs: {out-0: a}\n")
    assert unknown.status_code == 422
    known = "files, knowledge_base, llm, shout, template"
    assert f"unknown node type 'whisper' (known: {known})" in unknown.text
