"""Typed events a run yields, in order. The HTTP layer only encodes these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class NodeStarted:
    node_id: str


@dataclass(frozen=True, slots=True)
class NodeDelta:
    """New text from a node. Hot path: one of these per token."""

    node_id: str
    text: str


@dataclass(frozen=True, slots=True)
class NodeCompleted:
    node_id: str
    text: str
    usage: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NodeResults:
    """Structured results of a node, kept with the run: the citations of a retrieving node
    (one dict per result, see the knowledge-base contract) and what it says about its work
    (``details``). Sent by the node type before its NodeCompleted, at most a few per node,
    never per token."""

    node_id: str
    citations: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RunFinished:
    """Last event of every run. ``state`` is COMPLETED, FAILED or CANCELLED."""

    state: str
    error: str | None = None
    error_type: str | None = None
    node_id: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


Event = NodeStarted | NodeDelta | NodeCompleted | NodeResults | RunFinished
