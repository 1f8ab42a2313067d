"""The DAG runner.

Each node is a task in one task group. A node starts as soon as every node it references has
completed, so independent branches run in parallel. What a node does is its type's
(``flowserve.nodes``: the runner names none): its steps are text, streams of chunks the
runner relays itself (an LLM node's tokens are sent as :class:`NodeDelta` events the moment
they arrive, with nothing between the provider's iterator and the channel), and results
(:class:`NodeResults`). A node failure ends the run: the error names the node and the task
group cancels everything else (upstream streams included, since each provider closes its
connection when its task is cancelled).

Time limits (the flow's ``limits:``, else the server's defaults) cost nothing per token: the
total is one deadline cancel scope around the nodes; the idle limit is a loop timer (not a
task: a task per held stream cost memory) that fires a few times per limit and compares a
progress count (text pieces held by the nodes' part lists, plus nodes done) with the last one
it saw.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import anyio

from flowserve.errors import (
    FlowserveError,
    InputError,
    NodeError,
    OutputTooLargeError,
    RunTimeoutError,
)
from flowserve.events import (
    Event,
    NodeCompleted,
    NodeDelta,
    NodeResults,
    NodeStarted,
    RunFinished,
)
from flowserve.flows.graph import Flow, Node
from flowserve.nodes.base import Memory as Memory  # re-exported: the runner's memory protocol
from flowserve.nodes.base import NodeContext, RunText, Stream
from flowserve.providers.registry import ProviderRegistry
from flowserve.providers.resilience import RetryPolicy
from flowserve.runs._channel import Channel

log = logging.getLogger("flowserve.runner")


@dataclass(frozen=True, slots=True)
class TextLimits:
    """How much text one run may make: each node's output or rendered prompt, and the whole
    run's output together. Checked before a template is rendered and as tokens arrive, so a
    flow cannot make the server build (or a client receive) megabytes per run."""

    node_chars: int = 1_000_000
    run_chars: int = 4_000_000

    def check(self, what: str, node_size: int, run_size: int) -> None:
        if node_size > self.node_chars:
            raise OutputTooLargeError(
                f"{what} would be {node_size} characters, over this server's limit of "
                f"{self.node_chars} per node (max_node_chars)"
            )
        if run_size > self.run_chars:
            raise OutputTooLargeError(
                f"the run's text would be {run_size} characters, over this server's limit "
                f"of {self.run_chars} per run (max_run_chars)"
            )


class _RunState:
    __slots__ = ("chars", "completed", "done", "failure", "parts", "usage", "values")

    def __init__(self, flow: Flow, inputs: Mapping[str, str]) -> None:
        self.values: dict[str, str] = dict(inputs)
        # Only the nodes others wait for get an event (memory per open stream).
        self.done = {dep: asyncio.Event() for node in flow.nodes.values() for dep in node.deps}
        self.completed = 0
        self.chars = 0  # text the nodes produced, all together (TextLimits)
        self.usage: dict[str, Any] = {}  # node id -> token counts, partial when cancelled
        self.failure: NodeError | RunTimeoutError | None = None
        # each node's text so far, in pieces (the watchdog counts them)
        self.parts: dict[str, list[str]] = {node_id: [] for node_id in flow.nodes}

    def progress(self) -> int:
        return sum(map(len, self.parts.values())) + self.completed


class Runner:
    def __init__(
        self,
        registry: ProviderRegistry,
        policy: RetryPolicy | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        text_limits: TextLimits | None = None,
        services: Mapping[str, Any] | None = None,
    ) -> None:
        self.registry = registry
        self.policy = policy or RetryPolicy()
        self.timeout = timeout  # defaults for flows that set no ``limits``
        self.idle_timeout = idle_timeout
        self.text_limits = text_limits or TextLimits()
        self.services: Mapping[str, Any] = {} if services is None else services  # node types

    @asynccontextmanager
    async def start(
        self, flow: Flow, inputs: Mapping[str, str], memory: Memory | None = None
    ) -> AsyncIterator[Channel[Event]]:
        """Start the run; yield its events. Leaving the block cancels what is left.

        The last event is a :class:`RunFinished`: COMPLETED or FAILED, or CANCELLED when the
        block was left first, sent as the run unwinds so that it carries the usage of the
        nodes cut short (the consumer that left may still read it). A block left before the
        run had its first step ends with no event at all."""
        channel: Channel[Event] = Channel()
        state = _RunState(flow, inputs)
        # A plain asyncio task rather than an anyio task group: anyio wraps each child in a
        # handle with its own cancel scope, event and coroutine, paid per run (time to first
        # token, memory per open stream). The structure is the same: the task is cancelled
        # and waited for when the block is left, whatever the reason.
        task = asyncio.get_running_loop().create_task(self._drive(flow, state, memory, channel))
        try:
            yield channel
        finally:
            if not task.done():
                task.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait((task,))
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error

    async def _drive(
        self,
        flow: Flow,
        state: _RunState,
        memory: Memory | None,
        send: Channel[Event],
    ) -> None:
        limits = flow.spec.limits
        timeout = limits.timeout if limits and limits.timeout else self.timeout
        idle = limits.idle_timeout if limits and limits.idle_timeout else self.idle_timeout
        try:
            # asyncio's timeout, not an anyio scope: one timer, no scope object with its sets
            # and weak references kept for as long as the run is open.
            deadline = asyncio.timeout(timeout)
            try:
                async with deadline:
                    idle_timer = _IdleTimer(state, idle, deadline) if idle else None
                    try:
                        if len(flow.order) == 1:  # the common one-node flow: no task of its own
                            await self._node(flow.nodes[flow.order[0]], state, memory, send, None)
                        else:
                            # asyncio's task group: anyio's wraps each child in a handle
                            # whose cancel scope and stored error outlive the run in cycles.
                            nodes: list[asyncio.Task[None]] = []
                            async with asyncio.TaskGroup() as tg:
                                for node_id in flow.order:
                                    node = flow.nodes[node_id]
                                    coro = self._node(node, state, memory, send, nodes)
                                    nodes.append(tg.create_task(coro))
                    finally:
                        if idle_timer is not None:
                            idle_timer.cancel()
            except TimeoutError:
                if not deadline.expired():
                    raise
                if state.failure is None:
                    state.failure = RunTimeoutError(f"run exceeded its time limit of {timeout:g}s")
            if state.failure is not None:
                err = state.failure
                final = RunFinished(
                    "FAILED", str(err), err.error_type, err.node_id, usage=state.usage
                )
            else:
                final = RunFinished("COMPLETED", usage=state.usage)
            send.send_nowait(final)
        except asyncio.CancelledError as exc:
            # Cancelled by start() when its block is left (the consumer is gone): say so last,
            # with the usage so far, and end quietly.
            send.send_nowait(RunFinished("CANCELLED", usage=state.usage))
            # A task that ends on the error keeps it, and its traceback's frames hold the
            # run's state in a cycle only the full collection frees (tests/test_no_cycles.py);
            # so does Python 3.11's TaskGroup, whose __aexit__ frame keeps the error it raises.
            exc.__traceback__ = None
            return
        finally:
            send.close()

    async def _node(
        self,
        node: Node,
        state: _RunState,
        memory: Memory | None,
        send: Channel[Event],
        siblings: list[asyncio.Task[None]] | None,
    ) -> None:
        try:
            for dep in node.deps:
                await state.done[dep].wait()
            send.send_nowait(NodeStarted(node.id))
            text = await self._steps(node, state, memory, send)
            state.values[node.id] = text
            send.send_nowait(NodeCompleted(node.id, text, state.usage.get(node.id)))
            state.completed += 1
            if (done := state.done.get(node.id)) is not None:
                done.set()
        except FlowserveError as exc:
            self._fail(
                state,
                siblings,
                exc if isinstance(exc, NodeError) else NodeError(exc.message),
                node.id,
            )
        except asyncio.CancelledError:
            if siblings is None:
                raise  # the one node runs in the run's own task: its cancellation is the run's
            # A node task cancelled (by a failed sibling, the run's deadline or the consumer
            # leaving) just ends: the run's task handles its own cancellation, and a task that
            # ended on the error would keep it, with frames holding the run's state, in a
            # cycle only the full collection frees.
            return
        except Exception as exc:  # a bug or an unmapped library error: keep details in logs
            log.exception("node %s failed unexpectedly", node.id)
            error = NodeError(f"internal error ({type(exc).__name__})")
            self._fail(state, siblings, error, node.id)

    def _context(self, node: Node, state: RunText, memory: Memory | None) -> NodeContext:
        return NodeContext(
            node, state, memory, self.registry, self.policy, self.text_limits, self.services
        )

    async def check_prompts(self, flow: Flow, inputs: Mapping[str, str]) -> None:
        """Before a run: ask the node types that can (nodes compiled ``prechecked``) whether
        what the inputs alone decide can be served (a prompt too long for the provider's
        model). A refusal is the caller's input error (422), known before anything streams;
        what memory adds is checked when the node runs."""
        for node_id in flow.prompt_checked:
            node = flow.nodes[node_id]
            ctx = self._context(node, _Inputs(inputs), None)
            try:
                problem = await node.kind.precheck(node, ctx)
            except NodeError as exc:
                problem = exc.message
            if problem is not None:
                raise InputError(f"node {node_id}: {problem}", ("body",))

    @staticmethod
    def _fail(
        state: _RunState,
        siblings: list[asyncio.Task[None]] | None,
        error: NodeError,
        node_id: str,
    ) -> None:
        if error.node_id is None:
            error.node_id = node_id
        if state.failure is None:
            # Kept without its traceback: its frames hold the run's state, which holds the
            # error, a cycle only the full collection would free (tests/test_no_cycles.py).
            state.failure = error.with_traceback(None)
        if siblings is not None:  # cancel the other nodes
            current = asyncio.current_task()
            for task in siblings:
                if task is not current:
                    task.cancel()

    async def _steps(
        self, node: Node, state: _RunState, memory: Memory | None, send: Channel[Event]
    ) -> str:
        """Run the node's type and relay what it yields; its whole text."""
        ctx = self._context(node, state, memory)
        steps = node.kind.run(node, ctx)
        try:
            async for step in steps:  # a few per node: the per-token loop is _relay's
                kind = type(step)
                if kind is Stream:
                    await self._relay(node.id, cast(Stream, step), state, send)
                elif kind is str:
                    self._text(node.id, cast(str, step), state, send)
                elif kind is NodeResults:
                    results = cast(NodeResults, step)
                    if results.node_id != node.id:
                        raise TypeError(f"results of node {results.node_id!r} sent by another")
                    send.send_nowait(results)
                else:
                    raise TypeError(f"node type {node.spec.type!r} yielded a {kind.__name__}")
        finally:
            aclose = getattr(steps, "aclose", None)
            if aclose is not None:
                await aclose()
            if ctx.usage is not None:
                state.usage[node.id] = ctx.usage  # partial when cancelled
        return "".join(state.parts[node.id])

    def _text(self, node_id: str, text: str, state: _RunState, send: Channel[Event]) -> None:
        parts = state.parts[node_id]
        size = len(text)
        state.chars += size
        used = sum(map(len, parts)) + size
        limits = self.text_limits
        if used > limits.node_chars or state.chars > limits.run_chars:
            limits.check("output", used, state.chars)
        parts.append(text)
        send.send_nowait(NodeDelta(node_id, text))

    async def _relay(
        self, node_id: str, stream: Stream, state: _RunState, send: Channel[Event]
    ) -> None:
        """The per-token path: each chunk counted, kept and sent, in this one frame."""
        chunks = stream.chunks
        limits = self.text_limits
        parts = state.parts[node_id]
        node_max, run_max, used = limits.node_chars, limits.run_chars, sum(map(len, parts))
        # The stream's whole-time limit, one timer in this frame (not a scope around a yield).
        limit = asyncio.timeout(stream.timeout)
        try:
            async with limit:
                async for chunk in chunks:
                    size = len(chunk)
                    used += size
                    state.chars += size
                    if used > node_max or state.chars > run_max:
                        limits.check("output", used, state.chars)
                    parts.append(chunk)
                    send.send_nowait(NodeDelta(node_id, chunk))
        except TimeoutError:
            if not limit.expired():
                raise
            raise stream.timed_out() from None
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()


class _Inputs:
    """What a node context reads before a run: the inputs alone (check_prompts)."""

    __slots__ = ("chars", "parts", "values")

    def __init__(self, inputs: Mapping[str, str]) -> None:
        self.values = dict(inputs)
        self.parts: dict[str, list[str]] = {}
        self.chars = 0


class _IdleTimer:
    """The idle limit, on the event loop's timers rather than a task per run: a few times per
    limit, compare the progress count with the last one seen."""

    __slots__ = ("deadline", "handle", "idle", "interval", "loop", "quiet_since", "seen", "state")

    def __init__(self, state: _RunState, idle: float, deadline: asyncio.Timeout) -> None:
        self.state, self.idle, self.deadline = state, idle, deadline
        self.interval = min(1.0, idle / 10)
        self.loop = asyncio.get_running_loop()
        self.seen, self.quiet_since = state.progress(), self.loop.time()
        self.handle = self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        progress, now = self.state.progress(), self.loop.time()
        if progress != self.seen:
            self.seen, self.quiet_since = progress, now
        elif now - self.quiet_since >= self.idle:
            if self.state.failure is None:
                self.state.failure = RunTimeoutError(f"no output for {self.idle:g}s")
            self.deadline.reschedule(self.loop.time())  # expire the run's deadline now
            return
        self.handle = self.loop.call_later(self.interval, self._tick)

    def cancel(self) -> None:
        self.handle.cancel()
