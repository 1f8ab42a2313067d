"""What the cluster writes to Redis, compactly: each event as a small JSON array led by a
one-letter tag (a token is ``["d","llm-0","text"]``, about 20 bytes beside its text), a run's
:class:`RunInfo`, and the messages between processes. orjson both ways.
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from flowserve.cluster.base import Invalidation, RunInfo
from flowserve.events import (
    Event,
    NodeCompleted,
    NodeDelta,
    NodeResults,
    NodeStarted,
    RunFinished,
)

_dumps = orjson.dumps


def encode_event(event: Event) -> bytes:
    kind = type(event)
    if kind is NodeDelta:  # one per token: first
        delta = cast(NodeDelta, event)
        return _dumps(("d", delta.node_id, delta.text))
    if kind is NodeStarted:
        return _dumps(("s", event.node_id))
    if kind is NodeCompleted:
        done = cast(NodeCompleted, event)
        return _dumps(("c", done.node_id, done.text, done.usage))
    if kind is RunFinished:
        end = cast(RunFinished, event)
        return _dumps(("f", end.state, end.error, end.error_type, end.node_id, end.usage))
    if kind is NodeResults:
        results = cast(NodeResults, event)
        return _dumps(("r", results.node_id, results.citations, results.details))
    raise TypeError(f"not an event: {kind.__name__}")


def decode_event(data: bytes) -> Event:
    fields: list[Any] = orjson.loads(data)
    tag = fields[0]
    if tag == "d":
        return NodeDelta(fields[1], fields[2])
    if tag == "s":
        return NodeStarted(fields[1])
    if tag == "c":
        return NodeCompleted(fields[1], fields[2], fields[3])
    if tag == "f":
        return RunFinished(fields[1], fields[2], fields[3], fields[4], fields[5] or {})
    if tag == "r":
        return NodeResults(fields[1], fields[2], fields[3])
    raise ValueError(f"unknown event tag {tag!r}")


def encode_info(info: RunInfo) -> bytes:
    return _dumps(
        (
            info.run_id,
            info.owner,
            info.org_id,
            info.flow_id,
            info.flow_version,
            info.key_id,
            info.user_id,
            info.inputs,
        )
    )


def decode_info(data: bytes) -> RunInfo:
    run_id, owner, org_id, flow_id, version, key_id, user_id, inputs = orjson.loads(data)
    return RunInfo(run_id, owner, org_id, flow_id, version, key_id, user_id, inputs)


def encode_stop(run_id: str, reason: str) -> bytes:
    return _dumps((run_id, reason))


def decode_stop(data: bytes) -> tuple[str, str]:
    run_id, reason = orjson.loads(data)
    return str(run_id), str(reason)


def encode_invalidation(message: Invalidation) -> bytes:
    return _dumps((message.key_id, message.org_id, message.flow_id))


def decode_invalidation(data: bytes) -> Invalidation:
    key_id, org_id, flow_id = orjson.loads(data)
    return Invalidation(key_id, org_id, flow_id)
