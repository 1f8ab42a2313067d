"""The flow file format, as pydantic models. Structure only; graph checks live in graph.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    description: str = ""
    default: str | None = None


class MemorySpec(_Strict):
    """Conversation memory keyed by the request's ``user_id``: the last ``window`` exchanges."""

    window: int = Field(default=10, ge=1, le=200)


class LLMNodeSpec(_Strict):
    type: Literal["llm"]
    provider: str | None = None  # None: the server's default provider (settings)
    model: str | None = None
    system: str | None = None
    prompt: str
    memory: MemorySpec | None = None
    api_key_env: str | None = None
    base_url: str | None = None
    # Per-node time limits in seconds (the server's first_token_timeout / node_timeout
    # otherwise): until the first token, and for the whole call.
    first_token_timeout: float | None = Field(default=None, gt=0, le=3600)
    timeout: float | None = Field(default=None, gt=0, le=86400)
    # Generation options. Which ones a provider supports is checked against its Options.
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None

    def options(self) -> dict[str, Any]:
        names = ("max_tokens", "temperature", "top_p", "stop")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class TemplateNodeSpec(_Strict):
    type: Literal["template"]
    template: str


NodeSpec = Annotated[LLMNodeSpec | TemplateNodeSpec, Field(discriminator="type")]


class FlowLimits(_Strict):
    """Time limits of one run, in seconds; unset ones take the server's defaults
    (``run_timeout``, ``run_idle_timeout``). A run over either is FAILED (error_type
    ``timeout``)."""

    timeout: float | None = Field(default=None, gt=0, le=86_400)  # total run time
    idle_timeout: float | None = Field(default=None, gt=0, le=86_400)  # no token for this long


class ChatSpec(_Strict):
    """Which input a chat message fills and which output is the reply: for the chat page and
    ``/v1/chat/completions``. Unset fields mean the flow's first input and first output."""

    input: Identifier | None = None
    output: Identifier | None = None


class FlowSpec(_Strict):
    id: Identifier
    name: str = ""
    description: str = ""
    inputs: dict[Identifier, InputSpec] = Field(default_factory=dict)
    nodes: dict[Identifier, NodeSpec] = Field(default_factory=dict)
    outputs: dict[Identifier, Identifier]
    limits: FlowLimits | None = None
    chat: ChatSpec | None = None
