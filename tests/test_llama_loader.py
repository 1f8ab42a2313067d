"""Loading the embedded model (flowserve.providers.llama_loader): on a CPU with AMX the
weights load without llama.cpp's extra buffer types, whose AMX matmul crashes the process on
a prompt of more than a few tokens; the library's defaults are left as they were."""

from __future__ import annotations

import llama_cpp.llama as high_level
import pytest

from flowserve.providers import llama_loader
from flowserve.providers.local import bundled_model_path


def test_the_choice_follows_the_cpu_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWSERVE_LLAMA_EXTRA_BUFFERS", raising=False)
    assert llama_loader.extra_buffers() is (not llama_loader._cpu_has_amx())
    monkeypatch.setenv("FLOWSERVE_LLAMA_EXTRA_BUFFERS", "1")
    assert llama_loader.extra_buffers() is True
    monkeypatch.setenv("FLOWSERVE_LLAMA_EXTRA_BUFFERS", "0")
    assert llama_loader.extra_buffers() is False


def test_a_long_prompt_runs_and_the_defaults_are_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWSERVE_LLAMA_EXTRA_BUFFERS", "0")
    before = high_level.llama_cpp.llama_model_default_params
    llm = llama_loader.load(bundled_model_path(), n_ctx=1024, seed=0, verbose=False)
    try:
        assert high_level.llama_cpp.llama_model_default_params is before
        assert high_level.llama_cpp.llama_model_default_params().use_extra_bufts is True
        prompt = "Tell me about the history of the city and its old harbour. " * 30
        out = llm(prompt, max_tokens=4, temperature=0)
        assert out["usage"]["prompt_tokens"] > 300 and out["choices"][0]["text"] is not None
    finally:
        llm.close()
