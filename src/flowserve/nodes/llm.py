"""The ``llm`` node: a prompt (and system prompt) rendered from its edges, sent to a provider,
its answer streamed token by token; with ``memory``, the user's last exchanges are sent first.

At compile: the provider must be registered, the model one it can serve, each generation
option one its ``Options`` accepts, ``base_url`` and ``api_key_env`` within the server's
endpoint policy; a credential not set here is a warning. At run: one provider stream, with
retries before the first token and the node's time limits (``resilient_stream``), relayed by
the runner chunk by chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flowserve.errors import ConfigError
from flowserve.nodes.base import (
    CompileContext,
    Compiled,
    NodeContext,
    NodeSpec,
    NodeType,
    Step,
    Stream,
)
from flowserve.providers.base import LLMRequest, Message
from flowserve.providers.endpoints import EndpointError
from flowserve.providers.resilience import resilient_stream, stream_timeout

if TYPE_CHECKING:
    from flowserve.flows.graph import Node


class MemorySpec(BaseModel):
    """Conversation memory keyed by the request's ``user_id``: the last ``window`` exchanges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(default=10, ge=1, le=200)


class LLMNodeSpec(NodeSpec):
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


class LLMNode(NodeType[LLMNodeSpec]):
    name = "llm"
    Spec = LLMNodeSpec
    templates = ("prompt", "system")

    def compile(self, spec: LLMNodeSpec, ctx: CompileContext) -> Compiled:
        registry = ctx.providers
        provider_name = spec.provider or registry.default
        try:
            provider_cls = registry.provider_class(provider_name)
        except ConfigError as exc:
            ctx.problem("provider", exc.message)
            return Compiled()
        provider = registry.get(provider_name)
        model = spec.model or provider_cls.default_model
        if model is None:
            ctx.problem("model", f"provider {provider_name!r} needs a model")
        elif (problem := provider.check_model(model)) is not None:
            ctx.problem("model", problem)
        base_url: str | None = None
        if spec.base_url is not None:
            try:
                base_url = registry.policy.check_base_url(spec.base_url)
            except EndpointError as exc:
                ctx.problem("base_url", f"base_url {exc}")
        if spec.api_key_env is not None and (
            bad := registry.policy.key_env_problem(spec.api_key_env)
        ):
            ctx.problem("api_key_env", bad)
        options: dict[str, Any] = {}
        try:
            validated = provider_cls.Options.model_validate(spec.options())
            options = validated.model_dump(exclude_none=True)
        except ValidationError as exc:
            for err in exc.errors():
                name = ".".join(str(p) for p in err["loc"]) or "options"
                msg = err["msg"]
                if err["type"] == "extra_forbidden":
                    msg = f"option not supported by provider {provider_name!r}"
                ctx.problem(name, msg)
        if (var := provider.missing_credentials(spec.api_key_env)) is not None:
            ctx.warn(
                f"environment variable {var} is not set; runs of this node will fail until it is"
            )
        return Compiled(
            provider=provider_name,
            model=model,
            options=options,
            # the base_url as checked by the endpoint policy and rebuilt from its parsed
            # parts: what the provider is given, never the file's raw string
            data=base_url,
            prechecked=provider_cls.checks_prompts,
        )

    async def precheck(self, node: Node, ctx: NodeContext) -> str | None:
        """A prompt the provider refuses before generating (too long for its context)."""
        provider = ctx.providers.get(node.provider or ctx.providers.default)
        return await provider.prompt_problem(_request(node, ctx, []))

    async def run(self, node: Node, ctx: NodeContext) -> AsyncIterator[Step]:
        spec = cast(LLMNodeSpec, node.spec)
        provider = ctx.providers.get(node.provider or ctx.providers.default)
        memory = ctx.memory if spec.memory is not None else None
        history: list[Message] = []
        if memory is not None and spec.memory is not None:
            history = await memory.load(node.id, spec.memory.window)
        request = _request(node, ctx, history)
        prompt = request.messages[-1].content
        policy = ctx.retry
        if spec.first_token_timeout is not None or spec.timeout is not None:
            policy = replace(
                policy,
                ttft_timeout=spec.first_token_timeout or policy.ttft_timeout,
                total_timeout=spec.timeout or policy.total_timeout,
            )
        try:
            yield Stream(
                resilient_stream(provider, request, policy),
                policy.total_timeout,
                partial(stream_timeout, policy, provider.name),  # made only if it expires
            )
        finally:
            ctx.usage = request.usage.as_dict()  # partial when cancelled
        if memory is not None:
            await memory.append(node.id, prompt, ctx.text())


def _request(node: Node, ctx: NodeContext, history: list[Message]) -> LLMRequest:
    # prompt and system are checked against the node limit but are not output, not counted
    prompt = ctx.render("prompt")
    system = ctx.render("system") if "system" in node.templates else None
    spec = cast(LLMNodeSpec, node.spec)
    return LLMRequest(
        model=node.model or "",
        messages=[*history, Message("user", prompt)],
        system=system,
        options=dict(node.options),
        api_key_env=spec.api_key_env,
        base_url=node.data,
    )
