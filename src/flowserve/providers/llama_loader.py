"""Loading a GGUF with llama-cpp-python, the one way flowserve does it (the local chat
provider, the local embedder, the tests' reference and the benchmarks).

On CPUs with AMX (Intel Sapphire Rapids and later), a llama.cpp built with ``-march=native``
(pip's default build of llama-cpp-python) puts weights in its AMX "extra" buffer type, and
``ggml_backend_amx_mul_mat`` crashes the process (SIGSEGV) on the first batch of more than a
few tokens: seen with llama-cpp-python 0.3.36 on this workplace's 2-core Xeon, for chat
prompts of ~30 tokens and for every embedding. llama.cpp's model parameter
``use_extra_bufts = false`` keeps the weights in plain CPU buffers, which run correctly (the
AVX-512 kernels). So where ``/proc/cpuinfo`` lists ``amx_tile`` the weights load without
extra buffer types; elsewhere nothing changes (the extra types there repack quantised
weights for speed). ``FLOWSERVE_LLAMA_EXTRA_BUFFERS=1`` or ``0`` decides it by hand.

llama-cpp-python's ``Llama`` takes no argument for it: it builds the parameters from
``llama_model_default_params()`` inside its constructor. So, while one model loads, that
function is replaced by one that clears the flag, under a lock so loads do not interleave;
the original is restored before the constructor returns.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from pathlib import Path
from typing import Any

_LOADING = threading.Lock()


@cache
def _cpu_has_amx() -> bool:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and " amx_tile" in line for line in info.splitlines())


def extra_buffers() -> bool:
    """Whether weights may use llama.cpp's extra buffer types (see the module doc)."""
    chosen = os.environ.get("FLOWSERVE_LLAMA_EXTRA_BUFFERS", "").strip()
    if chosen in ("0", "1"):
        return chosen == "1"
    return not _cpu_has_amx()


def load(model_path: str | Path, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(model_path, **kwargs)``, without extra buffer types where they
    crash."""
    import llama_cpp
    import llama_cpp.llama as high_level

    if extra_buffers() or kwargs.get("vocab_only"):
        return llama_cpp.Llama(model_path=str(model_path), **kwargs)
    low_level = high_level.llama_cpp
    with _LOADING:
        default = low_level.llama_model_default_params

        def without_extra_buffers() -> Any:
            params = default()
            params.use_extra_bufts = False
            return params

        low_level.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(model_path=str(model_path), **kwargs)
        finally:
            low_level.llama_model_default_params = default
