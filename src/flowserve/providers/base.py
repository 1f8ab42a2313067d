"""The provider contract: what an adapter implements, and the request it receives."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from prometheus_client.registry import Collector


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # "user" | "assistant"
    content: str


@dataclass(slots=True)
class Usage:
    """Token counts for one LLM call; ``None`` means the provider did not say."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass(slots=True)
class LLMRequest:
    """One streaming completion. ``options`` were validated by the provider's Options model."""

    model: str
    messages: list[Message]
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    api_key_env: str | None = None
    base_url: str | None = None
    usage: Usage = field(default_factory=Usage)  # filled in by the adapter as it learns it


class NodeOptions(BaseModel):
    """Generation options an LLM node may set. A provider narrows this with its own subclass
    (``extra="forbid"``), so an option it does not support is a validation error at publish."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class ProviderEnv:
    """What a provider may read: the environment (for credentials) and its settings section."""

    environ: Mapping[str, str]
    settings: Mapping[str, Any]


class Provider:
    """Base class for adapters.

    Subclasses set ``name``, ``Options``, and implement :meth:`stream`, an async iterator of
    text chunks. It must close any upstream connection in ``finally`` so that cancelling the
    consuming task stops upstream generation. It raises only ``ProviderError`` subclasses.
    """

    name: ClassVar[str]
    Options: ClassVar[type[NodeOptions]] = NodeOptions
    default_model: ClassVar[str | None] = None
    # environment variable holding the API key when the node does not name one, or None
    default_key_env: ClassVar[str | None] = None
    # True if :meth:`prompt_problem` can refuse a request before it runs (costs a call)
    checks_prompts: ClassVar[bool] = False

    def __init__(self, env: ProviderEnv) -> None:
        self.env = env

    def check_model(self, model: str) -> str | None:
        """Return a problem description if ``model`` can never work, else None."""
        return None if model else "model must not be empty"

    def key_env(self, api_key_env: str | None) -> str | None:
        return api_key_env or self.default_key_env

    def missing_credentials(self, api_key_env: str | None) -> str | None:
        """Name of the environment variable that should hold the key but is unset, if any."""
        var = self.key_env(api_key_env)
        if var and not self.env.environ.get(var):
            return var
        return None

    def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        raise NotImplementedError

    async def prompt_problem(self, request: LLMRequest) -> str | None:
        """Why ``request`` cannot be served, known without generating (say, a prompt longer
        than the model's context), or None. Asked before a run starts, for the nodes whose
        prompt the inputs alone decide, so that the caller gets a 4xx; only providers that
        set ``checks_prompts`` are asked."""
        return None

    def collectors(self) -> Iterable[Collector]:
        """The provider's own Prometheus collectors (say, how long calls wait for a local
        model), shown on /metrics beside the core's. Read at every scrape; their names should
        start with ``flowserve_`` and their labels stay few (no key, user or flow ids)."""
        return ()

    async def prepare(self, model: str) -> None:
        """Optional warm-up before the first request (load weights, open pools)."""

    async def aclose(self) -> None:
        """Release clients, threads, models."""
