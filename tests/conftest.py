"""Shared fixtures: a real flowserve server process on a free port, with a fresh SQLite
database, an org and both kinds of key."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flowserve.auth import PRIVATE, PUBLIC
from flowserve.config import Settings
from flowserve.services import Services

ROOT = Path(__file__).resolve().parent.parent

# The scripted test provider is off in a production server (test_providers); the suite turns it
# on for itself and for every server it starts. tests/test_scripted_gate.py checks the default.
os.environ["FLOWSERVE_TEST_PROVIDERS"] = "true"
FLOWS = Path(__file__).resolve().parent / "flows"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    base_url: str
    org: str
    public_key: str
    private_key: str
    database_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def publish(self, text: str, key: str | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.base_url}/v1/orgs/{self.org}/flows",
            content=text.encode(),
            headers={"Authorization": f"Bearer {key or self.private_key}"},
            timeout=30,
        )

    def publish_file(self, name: str) -> None:
        response = self.publish((FLOWS / name).read_text())
        assert response.status_code in (200, 201), response.text

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.public_key}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def make_org(database_url: str, org: str) -> tuple[str, str]:
    async def go() -> tuple[str, str]:
        state = Services.build(Settings(database_url=database_url))
        await state.db.create_schema()
        await state.keys.create_org(org)
        public = await state.keys.create_key(org, PUBLIC)
        private = await state.keys.create_key(org, PRIVATE)
        await state.aclose()
        return public.token, private.token

    return asyncio.run(go())


def start_server(
    tmp: Path,
    env: dict[str, str] | None = None,
    org: str = "acme",
    keys: tuple[str, str] | None = None,
    database_url: str | None = None,
) -> Server:
    """A server on ``tmp/flowserve.db`` (or ``database_url``). Given the (public, private)
    ``keys`` of an earlier server on the same database, it uses that org instead of creating
    it."""
    database_url = database_url or f"sqlite+aiosqlite:///{tmp / 'flowserve.db'}"
    public, private = keys or make_org(database_url, org)
    port = free_port()
    log_path = tmp / "server.log"
    full_env = {
        **os.environ,
        "FLOWSERVE_DATABASE_URL": database_url,
        "FLOWSERVE_PORT": str(port),
        "FLOWSERVE_LOG_LEVEL": "info",
        **(env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "flowserve", "serve"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"server did not start:\n{log_path.read_text()}")
    return Server(base_url, org, public, private, database_url, process, log_path)


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def published_server(tmp: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """A server with every flow in tests/flows published, for the test module."""
    srv = start_server(tmp, env=env)
    try:
        for path in sorted(FLOWS.glob("*.yaml")):
            srv.publish_file(path.name)
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per test module, with every flow in tests/flows published."""
    yield from published_server(tmp_path_factory.mktemp("server"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # llama_cpp._utils opens two /dev/null files at import and never closes them, which
    # prints a ResourceWarning at interpreter exit (after pytest's summary line).
    import sys as _sys

    utils = _sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()
