"""The node-type contract: what a plugin declares, and what it is given to compile and run.

A node type is one :class:`NodeType` subclass. It declares its ``type:`` (``name``), its flow
file fields (``Spec``, a :class:`NodeSpec` subclass with ``type: Literal[name]``) and which of
them are templates (``templates``: their ``{names}`` are the node's edges). When a flow is
compiled, :meth:`NodeType.compile` checks one node (sync, problems named by field) and says
what the node calls (provider, model); when it is published, :meth:`NodeType.check` may look
further (async, with the services the composition root passes). When it runs,
:meth:`NodeType.run` is an async iterator of *steps*:

- a ``str``: text of the node's output, sent as one :class:`~flowserve.events.NodeDelta`;
- a :class:`Stream`: an async iterator of text chunks that the runner relays itself, each as
  a NodeDelta, with nothing between the chunk and the client (the per-token path);
- a :class:`~flowserve.events.NodeResults`: structured results (citations), kept with the run.

The runner sends NodeStarted before and NodeCompleted (the node's whole text, its ``usage``)
after, counts the text against the server's limits, and cancels the iterator with the run.
Nothing here names a node type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from flowserve.errors import FlowserveError, NodeError
from flowserve.events import NodeResults
from flowserve.providers.base import Message

if TYPE_CHECKING:
    from flowserve.flows.graph import Node
    from flowserve.providers.registry import ProviderRegistry
    from flowserve.providers.resilience import RetryPolicy
    from flowserve.runs.runner import TextLimits

Problem = tuple[str, str]  # (location, message), as in FlowValidationError


class NodeSpec(BaseModel):
    """Base of every node type's flow-file fields: unknown fields refused, frozen. A subclass
    narrows ``type`` to its ``Literal["name"]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str


S = TypeVar("S", bound=NodeSpec)


class Memory(Protocol):
    """Conversation memory of one (org, flow, user); the runner adds the node id."""

    async def load(self, node_id: str, window: int) -> list[Message]: ...

    async def append(self, node_id: str, user: str, assistant: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Compiled:
    """What a node type made of one node when the flow was compiled."""

    provider: str | None = None  # the provider it calls, if any (metrics, warm-up)
    model: str | None = None  # the model it asks that provider for
    options: Mapping[str, Any] = field(default_factory=dict)  # checked generation options
    data: Any = None  # anything else its runs need, checked once (e.g. a rebuilt base_url)
    # ask :meth:`NodeType.precheck` before each run when the inputs alone decide the node
    prechecked: bool = False


class _Problems:
    __slots__ = ("node_id", "problems")

    def __init__(self, node_id: str, problems: list[Problem]) -> None:
        self.node_id = node_id
        self.problems = problems

    def problem(self, field_name: str, message: str) -> None:
        """Refuse the flow: ``field_name`` of this node (``"model"``, ``"memory.window"``)."""
        self.problems.append((f"nodes.{self.node_id}.{field_name}", message))


class CompileContext(_Problems):
    """Given to :meth:`NodeType.compile`: the providers, and where problems and warnings go."""

    __slots__ = ("providers", "warnings")

    def __init__(
        self,
        node_id: str,
        providers: ProviderRegistry,
        problems: list[Problem],
        warnings: list[str],
    ) -> None:
        super().__init__(node_id, problems)
        self.providers = providers
        self.warnings = warnings

    def warn(self, message: str) -> None:
        """Publish anyway, with a warning about this node (say, a credential not set here)."""
        self.warnings.append(f"nodes.{self.node_id}: {message}")


class CheckContext(_Problems):
    """Given to :meth:`NodeType.check` at publish: the organisation publishing, and the
    services the composition root passes to node types (say, a knowledge-base store)."""

    __slots__ = ("org_id", "services")

    def __init__(
        self, node_id: str, org_id: str, services: Mapping[str, Any], problems: list[Problem]
    ) -> None:
        super().__init__(node_id, problems)
        self.org_id = org_id
        self.services = services


class RunText(Protocol):
    """The part of a run's state a node context reads: the values so far (inputs and the
    texts of completed nodes), each node's text in pieces, and the run's text size."""

    values: dict[str, str]
    parts: dict[str, list[str]]
    chars: int


class NodeContext:
    """Given to :meth:`NodeType.run` (and :meth:`NodeType.precheck`): one per node run."""

    __slots__ = ("_limits", "_state", "memory", "node", "providers", "retry", "services", "usage")

    def __init__(
        self,
        node: Node,
        state: RunText,
        memory: Memory | None,
        providers: ProviderRegistry,
        retry: RetryPolicy,
        limits: TextLimits,
        services: Mapping[str, Any],
    ) -> None:
        self.node = node
        self._state = state
        self._limits = limits
        self.memory = memory  # None: the request named no user
        self.providers = providers
        self.retry = retry  # the server's retries and time limits for provider calls
        self.services = services  # what the composition root passes to node types
        # token counts, recorded with the run and sent in NodeCompleted: set by the node,
        # in a ``finally`` so that a node cut short still reports what it used
        self.usage: dict[str, Any] | None = None

    @property
    def values(self) -> Mapping[str, str]:
        """The run's inputs and the texts of the nodes completed so far."""
        return self._state.values

    def render(self, field_name: str, output: bool = False) -> str:
        """One of the node's templates, rendered. Its size is checked before it is built:
        against the node limit, and with ``output`` (the node will yield it as its text)
        against the run's too. Raises OutputTooLargeError."""
        template = self.node.templates[field_name]
        values = self._state.values
        size = template.size(values)
        if output:
            self._limits.check("output", size, self._state.chars + size)
        else:
            self._limits.check(field_name, size, 0)
        return template.render(values)

    def text(self) -> str:
        """The node's text so far (what it yielded and what its streams relayed)."""
        return "".join(self._state.parts[self.node.id])


def _stream_expired(timeout: float) -> FlowserveError:
    return NodeError(f"stream did not complete within {timeout:g}s")


@dataclass(frozen=True, slots=True)
class Stream:
    """Text chunks for the runner to relay as they come, within ``timeout`` seconds (one
    timer around the whole relay, none per chunk); past it, the node fails with
    ``expired()``. The runner closes ``chunks`` (``aclose``) when it ends, however it ends."""

    chunks: AsyncIterator[str]
    timeout: float | None = None
    expired: Callable[[], FlowserveError] | None = None

    def timed_out(self) -> FlowserveError:
        if self.expired is not None:
            return self.expired()
        return _stream_expired(self.timeout or 0.0)


Step = str | Stream | NodeResults


class NodeType(Generic[S]):
    """Base of node types. Subclasses set ``name``, ``Spec`` and ``templates``, and
    implement :meth:`run`; :meth:`compile`, :meth:`check` and :meth:`precheck` are optional.
    One instance serves every node of its type (no per-node state on it)."""

    name: ClassVar[str]  # the ``type:`` of its nodes in flow files
    Spec: ClassVar[type[NodeSpec]]
    # fields of Spec holding templates (a str, or None when unset): their {names} are edges
    templates: ClassVar[tuple[str, ...]] = ()

    def compile(self, spec: S, ctx: CompileContext) -> Compiled:
        """Check one node when its flow is compiled (published or loaded): report problems
        with ``ctx.problem(field, message)``. Runs on a worker thread; no I/O."""
        return Compiled()

    async def check(self, spec: S, ctx: CheckContext) -> None:
        """Further checks at publish that need I/O (say, that the knowledge bases it names
        exist in the organisation); problems go to ``ctx.problem`` like compile's."""

    async def precheck(self, node: Node, ctx: NodeContext) -> str | None:
        """Why this node cannot run on these inputs, known before the run (then the caller
        gets a 422), or None. Asked only for nodes compiled ``prechecked`` and depending on
        inputs alone."""
        return None

    def run(self, node: Node, ctx: NodeContext) -> AsyncIterator[Step]:
        """The node's work, as steps (see the module's docstring). Raise a NodeError (or
        another FlowserveError) to fail the run naming this node."""
        raise NotImplementedError


__all__ = [
    "CheckContext",
    "CompileContext",
    "Compiled",
    "Memory",
    "NodeContext",
    "NodeResults",
    "NodeSpec",
    "NodeType",
    "Problem",
    "RunText",
    "Step",
    "Stream",
]
