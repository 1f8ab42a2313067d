"""Encoding run events into the frames of each route (contract 2.1, 2.3).

An encoder is fed batches of events; each batch becomes at most one frame, so a batch that
piled up while the client was slow is written as one merged update (latest cumulative snapshot
wins; deltas are concatenated). Frames are encoded once, with orjson, straight to bytes.
"""

from __future__ import annotations

import re
from typing import Any, cast

import orjson

from flowserve.events import Event, NodeCompleted, NodeDelta, NodeStarted, RunFinished
from flowserve.runs.run import Run
from flowserve.store.runs import RUNNING

# JSON may hold U+0085, U+2028 and U+2029 raw in strings, but line readers split on them
# (Python's str.splitlines, httpx's iter_lines, which the Python client uses): escaped, every
# frame stays one line. In UTF-8 these byte sequences can be nothing else.
_LINE_BREAKS = re.compile(rb"\xc2\x85|\xe2\x80[\xa8\xa9]")
_ESCAPES = {b"\xc2\x85": b"\\u0085", b"\xe2\x80\xa8": b"\\u2028", b"\xe2\x80\xa9": b"\\u2029"}


def _escape_break(match: re.Match[bytes]) -> bytes:
    return _ESCAPES[match.group()]


class Encoder:
    """Base: tracks which outputs changed. Subclasses build the frame payload."""

    def __init__(self, run: Run, delta: bool, sse: bool) -> None:
        self.run = run
        self.delta = delta
        self.sse = sse
        # How many of the run's events (its log, flowserve.runs._log) the frames so far
        # cover: each SSE frame's id is "<run_id>:<position>", which a client that lost its
        # connection sends back as last-event-id to resume after it (contract 2.5).
        self.position = 0
        self.outputs_from = run.flow.outputs.items()
        self.node_outputs: dict[str, list[str]] = {}
        for out_id, source in run.flow.outputs.items():
            self.node_outputs.setdefault(source, []).append(out_id)
        self.pending: dict[str, list[str]] = {}
        self.progress_changed = False
        self.finished = False  # the run's last frame is written

    def frame(self, payload: dict[str, Any]) -> bytes:
        data = orjson.dumps(payload)
        if _LINE_BREAKS.search(data) is not None:
            data = _LINE_BREAKS.sub(_escape_break, data)
        if not self.sse:
            return data + b"\n"
        return b"id: %s:%d\ndata: %s\n\n" % (self.run.id.encode(), self.position, data)

    def first(self) -> bytes:
        # Node outputs start "": whatever a node has produced by now (a template node
        # finishes within the run's first loop turn) is in the events still to be encoded,
        # and in delta mode counting it here too would send it twice. An output that is an
        # input already holds its value (in delta mode, this frame is its only delta).
        inputs = self.run.inputs
        outputs = {out: inputs.get(src, "") for out, src in self.outputs_from}
        return self.frame(self.payload(outputs))

    def batch(self, events: list[Event]) -> bytes | None:
        """One merged frame for a batch of events, or None if nothing visible changed."""
        changed = False
        final: RunFinished | None = None
        for event in events:
            kind = type(event)
            if kind is NodeDelta:
                delta = cast(NodeDelta, event)
                outs = self.node_outputs.get(delta.node_id)
                if outs:
                    changed = True
                    if self.delta:
                        for out_id in outs:
                            self.pending.setdefault(out_id, []).append(delta.text)
            elif kind is RunFinished:
                # The run's own final word: a stop that came first wins over the runner's.
                final = self.run.final or cast(RunFinished, event)
                self.finished = True
            elif kind is NodeStarted or kind is NodeCompleted:
                self.progress_changed = True
        out = b""
        if changed or (self.progress_changed and self.reports_progress):
            out = self.frame(self.payload(self.outputs_now()))
            self.progress_changed = False
        if final is not None:
            out += self.final(final)
        return out or None

    def outputs_now(self) -> dict[str, str]:
        if not self.delta:
            return self.run.outputs()
        pending, self.pending = self.pending, {}
        return {out: "".join(pending.get(out, ())) for out in self.run.flow.outputs}

    reports_progress = False

    def payload(self, outputs: dict[str, str]) -> dict[str, Any]:
        raise NotImplementedError

    def final(self, final: RunFinished) -> bytes:
        raise NotImplementedError


class LegacyEncoder(Encoder):
    """``/stream_exported_flow``: the flat outputs object, cumulative unless delta=true."""

    def payload(self, outputs: dict[str, str]) -> dict[str, Any]:
        return outputs

    def final(self, final: RunFinished) -> bytes:
        if final.state == "COMPLETED":
            return b""
        return self.frame(
            {
                "error": final.error or "run failed",
                "error_type": final.error_type,
                "node_id": final.node_id,
                "run_id": self.run.id,
            }
        )


class EnvelopeEncoder(Encoder):
    """``/inference/v0/stream``: every frame is the run envelope."""

    reports_progress = True

    def __init__(self, run: Run, delta: bool, sse: bool) -> None:
        super().__init__(run, delta, sse)
        self.started: list[str] = []
        self.completed: list[str] = []

    def batch(self, events: list[Event]) -> bytes | None:
        for event in events:
            if type(event) is NodeStarted:
                self.started.append(event.node_id)
            elif type(event) is NodeCompleted:
                self.completed.append(event.node_id)
        return super().batch(events)

    def payload(
        self,
        outputs: dict[str, str],
        state: str = "RUNNING",
        error: str | None = None,
        metadata: Any = None,
    ) -> dict[str, Any]:
        return envelope(self.run, outputs, state, error, metadata, self.progress())

    def progress(self) -> dict[str, Any]:
        return {
            "current_node": self.started[-1] if self.started else None,
            "total_nodes": len(self.run.flow.nodes),
            "started_nodes": list(self.started),
            "completed_nodes": list(self.completed),
        }

    def final(self, final: RunFinished) -> bytes:
        run = self.run
        meta = metadata(run, final)
        payload = envelope(
            run, self.outputs_now(), final.state, final.error, meta, self.progress(),
            run.citations(),
        )  # fmt: skip
        return self.frame(payload)


def metadata(run: Run, final: RunFinished) -> dict[str, Any]:
    """The last frame's ``metadata``: usage and timings per node (the pages show them)."""
    return {
        "usage": final.usage,
        "nodes": node_timings(run, final),
        "flow_id": run.flow.id,
        "flow_version": run.loaded.version,
        "error_type": final.error_type,
        "node_id": final.node_id,
    }


def node_timings(run: Run, final: RunFinished) -> dict[str, dict[str, Any]]:
    """:meth:`Run.node_timings` once the run has ended. A stream's last frame is written
    before the run measures the nodes its end cut short: those say the run's final state
    (how the record will), and their ``duration_ms`` is in the record only."""
    timings = run.node_timings()
    for timing in timings.values():
        if timing["state"] == RUNNING:
            timing["state"] = final.state
    return timings


def envelope(
    run: Run,
    outputs: dict[str, str],
    state: str,
    error: str | None,
    meta: Any,
    progress: dict[str, Any] | None,
    citations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The v0 run envelope. ``citations`` only in the last one (the run's, contract 3.7):
    every other frame carries []."""
    return {
        "outputs": outputs,
        "run_id": run.id,
        "state": state,
        "error": error,
        "metadata": meta,
        "progress_data": progress,
        "citations": citations or [],
        "pause": None,
    }
