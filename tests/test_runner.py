"""The DAG runner, driven by the scripted provider."""

from __future__ import annotations

import time

import pytest

from flowserve.events import NodeCompleted, NodeDelta, NodeStarted, RunFinished
from flowserve.providers.resilience import RetryPolicy
from flowserve.runs.runner import Runner
from tests.helpers import flow, registry

pytestmark = pytest.mark.anyio


async def collect(f, inputs):
    runner = Runner(registry(), RetryPolicy(max_retries=0))
    seen = []
    async with runner.start(f, inputs) as events:
        async for event in events:
            seen.append((time.monotonic(), event))
    return seen


async def test_independent_branches_overlap_in_time():
    f = flow("""
        id: par
        inputs: {in-0: {}}
        nodes:
          a: {type: llm, provider: scripted, model: "echo?delay=0.1", prompt: "{in-0}"}
          b: {type: llm, provider: scripted, model: "echo?delay=0.1", prompt: "{in-0}"}
        outputs: {out-0: a, out-1: b}
    """)
    started = time.monotonic()
    seen = await collect(f, {"in-0": "one two three four five"})
    elapsed = time.monotonic() - started
    deltas = [(t, e.node_id) for t, e in seen if isinstance(e, NodeDelta)]
    # Each branch alone takes 5 x 0.1 s; run one after the other they would take 1 s.
    assert elapsed < 0.8
    a_times = [t for t, n in deltas if n == "a"]
    b_times = [t for t, n in deltas if n == "b"]
    assert len(a_times) == len(b_times) == 5
    # Interleaved: b produced tokens while a was still producing.
    assert b_times[0] < a_times[-1] and a_times[0] < b_times[-1]
    assert isinstance(seen[-1][1], RunFinished) and seen[-1][1].state == "COMPLETED"


async def test_chained_nodes_and_template():
    f = flow("""
        id: chain
        inputs: {in-0: {}}
        nodes:
          a: {type: llm, provider: scripted, model: "echo?delay=0.01", prompt: "hello {in-0}"}
          b: {type: llm, provider: scripted, prompt: "again {a}"}
          t: {type: template, template: "<{a}|{b}> {{x}}"}
        outputs: {out-0: a, out-1: b, out-2: t}
    """)
    seen = [e for _, e in await collect(f, {"in-0": "world"})]
    done = {e.node_id: e.text for e in seen if isinstance(e, NodeCompleted)}
    assert done == {
        "a": "hello world",
        "b": "again hello world",
        "t": "<hello world|again hello world> {x}",
    }
    order = [e.node_id for e in seen if isinstance(e, NodeStarted)]
    assert order.index("a") < order.index("b")
    # b starts only after a completed.
    a_done = next(
        i for i, e in enumerate(seen) if isinstance(e, NodeCompleted) and e.node_id == "a"
    )
    b_start = next(i for i, e in enumerate(seen) if isinstance(e, NodeStarted) and e.node_id == "b")
    assert a_done < b_start
    final = seen[-1]
    assert isinstance(final, RunFinished) and final.state == "COMPLETED"
    assert final.usage["a"] == {"prompt_tokens": 2, "completion_tokens": 2}


async def test_output_streams_while_a_downstream_node_waits():
    f = flow("""
        id: live
        inputs: {in-0: {}}
        nodes:
          a: {type: llm, provider: scripted, model: "echo?delay=0.05", prompt: "{in-0}"}
          b: {type: llm, provider: scripted, prompt: "{a}"}
        outputs: {out-0: a, out-1: b}
    """)
    seen = [e for _, e in await collect(f, {"in-0": "1 2 3 4"})]
    kinds = [(type(e).__name__, getattr(e, "node_id", None)) for e in seen]
    first_b = kinds.index(("NodeStarted", "b"))
    a_deltas = [i for i, k in enumerate(kinds) if k == ("NodeDelta", "a")]
    assert len(a_deltas) == 4 and max(a_deltas) < first_b


async def test_node_failure_names_the_node_and_cancels_the_rest():
    f = flow("""
        id: fail
        inputs: {in-0: {}}
        nodes:
          bad: {type: llm, provider: scripted, model: "echo?delay=0.01&fail_after=2", prompt: "{in-0}"}
          slow: {type: llm, provider: scripted, model: "echo?delay=1", prompt: "{in-0}"}
          after: {type: template, template: "{bad}"}
        outputs: {out-0: bad, out-1: slow, out-2: after}
    """)
    started = time.monotonic()
    seen = [e for _, e in await collect(f, {"in-0": "a b c d e"})]
    assert time.monotonic() - started < 0.9  # slow (5 s) was cancelled
    final = seen[-1]
    assert isinstance(final, RunFinished)
    assert final.state == "FAILED" and final.node_id == "bad"
    assert final.error is not None and "bad" in final.error and "scripted failure" in final.error
    completed = {e.node_id for e in seen if isinstance(e, NodeCompleted)}
    assert completed == set()


async def test_per_node_time_limits():
    f = flow("""
        id: slow
        inputs: {in-0: {}}
        nodes:
          late: {type: llm, provider: scripted, model: "echo?first_delay=2", prompt: "{in-0}",
                 first_token_timeout: 0.2}
          long: {type: llm, provider: scripted, model: "echo?delay=0.1", prompt: "{in-0}",
                 timeout: 0.35}
        outputs: {out-0: late, out-1: long}
    """)
    seen = [e for _, e in await collect(f, {"in-0": "a b c d e f g h"})]
    final = seen[-1]
    assert isinstance(final, RunFinished) and final.state == "FAILED"
    assert final.node_id == "late" and "no first token within 0.2s" in final.error
    seen = [
        e
        for _, e in await collect(
            flow(
                f.spec.model_dump_json().replace(
                    '"first_token_timeout":0.2', '"first_token_timeout":null'
                )
            ),
            {"in-0": "a b c d e f g h"},
        )
    ]
    final = seen[-1]
    assert final.node_id == "long" and "did not complete within 0.35s" in final.error
