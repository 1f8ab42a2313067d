"""The three servers of the relay benchmark, each in its own process.

* :class:`FakeUpstream`: ``bench/fake_upstream.py``.
* :class:`Flowserve`: ``python -m flowserve serve`` (one worker, uvloop + httptools) on a fresh
  SQLite database with an org, a public key and the one-node relay flow published before the
  process starts, so the first request can be served straight away. (The org/key set-up is
  the same as tests/conftest.py's ``make_org``, copied: bench does not import tests.)
* :class:`LiteLLM`: ``litellm --config`` from ``bench/.venv-litellm`` (installed from PyPI by
  :func:`ensure_litellm`), one worker, ``model_list`` entry ``openai/fake`` on the same
  upstream, a master key (LiteLLM refuses to start without one), the local model-cost map
  (no network fetch at start) and ``LITELLM_LOG=ERROR`` (no access log).
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
from _procs import spawn, stop

HERE = Path(__file__).resolve().parent
LITELLM_VENV = HERE / ".venv-litellm"
ORG, FLOW_ID = "bench", "relay"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, seconds: float, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


class FakeUpstream:
    def __init__(self, workdir: Path, tokens: int, gap_ms: float) -> None:
        self.workdir, self.tokens, self.gap_ms = workdir, tokens, gap_ms

    def start(self) -> FakeUpstream:
        self.port = free_port()
        self.process = spawn(
            [
                sys.executable,
                str(HERE / "fake_upstream.py"),
                "--port",
                str(self.port),
                "--tokens",
                str(self.tokens),
                "--gap-ms",
                str(self.gap_ms),
            ],
            self.workdir / "fake_upstream.log",
        )
        self.pid = self.process.pid
        if not wait_http(f"http://127.0.0.1:{self.port}/stats", 20, self.process):
            raise RuntimeError("fake upstream did not start")
        self.v1 = f"http://127.0.0.1:{self.port}/v1"
        return self

    def control(self, **pacing: float) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.port}/control"
        return httpx.post(url, json=pacing, timeout=5).json()  # type: ignore[no-any-return]

    def stats(self) -> dict[str, object]:
        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json()  # type: ignore[no-any-return]

    def stop(self) -> None:
        if getattr(self, "process", None) is None:
            return
        stop(self.process)


def relay_flow(upstream_v1: str) -> str:
    return f"""\
id: {FLOW_ID}
inputs: {{in-0: {{description: "question"}}}}
nodes:
  llm-0:
    type: llm
    provider: openai-compatible
    model: fake
    base_url: "{upstream_v1}"
    prompt: "{{in-0}}"
outputs: {{out-0: llm-0}}
"""


class Flowserve:
    def __init__(self, workdir: Path, upstream_v1: str) -> None:
        self.workdir = workdir
        self.database_url = f"sqlite+aiosqlite:///{workdir / 'flowserve.db'}"
        self.upstream_v1 = upstream_v1

    def prepare(self) -> None:
        """Schema, org, keys and the published flow, before the server process exists."""
        self.public_key = asyncio.run(self._prepare())

    async def _prepare(self) -> str:
        from flowserve.auth import PRIVATE, PUBLIC
        from flowserve.config import Settings
        from flowserve.services import Services

        state = Services.build(Settings(database_url=self.database_url))
        try:
            await state.db.create_schema()
            await state.keys.create_org(ORG)
            public = await state.keys.create_key(ORG, PUBLIC)
            await state.keys.create_key(ORG, PRIVATE)
            await state.flows.publish(ORG, relay_flow(self.upstream_v1))
        finally:
            await state.aclose()
        return public.token

    def start(self, extra_env: dict[str, str] | None = None) -> float:
        """Start the process; returns its perf_counter start time."""
        self.port = free_port()
        env = {
            "FLOWSERVE_DATABASE_URL": self.database_url,
            "FLOWSERVE_PORT": str(self.port),
            "FLOWSERVE_HOST": "127.0.0.1",
            "FLOWSERVE_LOG_LEVEL": "warning",
            "FLOWSERVE_WARM_UP": "false",
            # Abuse limits off or far above the load (LiteLLM runs without any either): the
            # benchmark measures the relay, not the 429s.
            "FLOWSERVE_RATE_LIMIT_PER_MINUTE": "0",
            "FLOWSERVE_MAX_CONCURRENT_RUNS_PER_KEY": "1000000",
            "FLOWSERVE_MAX_CONCURRENT_RUNS": "1000000",
            **(extra_env or {}),
        }
        started = time.perf_counter()
        self.process = spawn(
            [sys.executable, "-m", "flowserve", "serve"],
            self.workdir / "flowserve.log",
            env=env,
            cwd=self.workdir,
        )
        self.pid = self.process.pid
        return started

    def stop(self) -> None:
        if getattr(self, "process", None) is None:
            return
        stop(self.process, timeout=30)


def ensure_litellm(log: Path, timeout: float = 420.0) -> str | None:
    """Install ``litellm[proxy]`` into bench/.venv-litellm if it is not there yet.

    Returns None when it is usable, else why not (the benchmark then skips LiteLLM)."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return None
    with log.open("wb") as out:
        try:
            if not (LITELLM_VENV / "bin" / "python").exists():
                subprocess.run(
                    [sys.executable, "-m", "venv", str(LITELLM_VENV)],
                    check=True,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=120,
                )
            subprocess.run(
                [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            return f"pip install 'litellm[proxy]' failed ({exc}): {' | '.join(tail)}"
    return None if exe.exists() else "litellm installed but bin/litellm is missing"


def litellm_version() -> str:
    try:
        out = subprocess.run(
            [
                str(LITELLM_VENV / "bin" / "python"),
                "-c",
                "import importlib.metadata as m;print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout.strip() or "unknown"
    except (subprocess.SubprocessError, OSError):
        return "unknown"


class LiteLLM:
    def __init__(self, workdir: Path, upstream_v1: str) -> None:
        self.workdir = workdir
        self.upstream_v1 = upstream_v1
        self.master_key = "sk-bench-" + secrets.token_hex(16)

    def start(self) -> float:
        self.port = free_port()
        config = self.workdir / "litellm.yaml"
        config.write_text(
            f"""\
model_list:
  - model_name: fake
    litellm_params:
      model: openai/fake
      api_base: "{self.upstream_v1}"
      api_key: sk-fake
litellm_settings:
  drop_params: true
  telemetry: false
general_settings:
  master_key: "{self.master_key}"
"""
        )
        env = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "NO_DOCS": "True",
        }
        started = time.perf_counter()
        self.process = spawn(
            [
                str(LITELLM_VENV / "bin" / "litellm"),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--num_workers",
                "1",
            ],
            self.workdir / "litellm.log",
            env=env,
            cwd=self.workdir,
            unset=("DATABASE_URL", "LITELLM_MASTER_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
        )
        self.pid = self.process.pid
        return started

    def wait_ready(self, seconds: float = 120) -> bool:
        url = f"http://127.0.0.1:{self.port}/health/liveliness"
        return wait_http(url, seconds, self.process)

    def log_tail(self, lines: int = 15) -> str:
        text = (self.workdir / "litellm.log").read_text(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        if getattr(self, "process", None) is None:
            return
        stop(self.process, timeout=30)
