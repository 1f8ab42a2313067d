"""llama-cpp-python called directly, in the test process: what the embedded model answers on
this machine. Tests compare flowserve's text with it instead of asserting the model's words,
which change with the CPU's SIMD kernels at temperature 0."""

from __future__ import annotations

import os
from functools import cache

from flowserve.providers.local import bundled_model_path


@cache
def direct(
    prompt: str, system: str | None = None, max_tokens: int = 24, model: str | None = None
) -> str:
    """A new context with flowserve's default settings (n_ctx 2048, a thread per core,
    seed 0), the model's own chat template, greedy decoding."""
    from flowserve.providers import llama_loader

    llm = llama_loader.load(
        model or bundled_model_path(),
        n_ctx=2048,
        n_threads=os.cpu_count() or 2,
        seed=0,
        verbose=False,
    )
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    try:
        chunks = llm.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=max_tokens,
            stream=True,
        )
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)  # type: ignore[index,union-attr]
    finally:
        llm.close()
