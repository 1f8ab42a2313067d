"""Start a flowserve server process for a benchmark: fresh SQLite DB, an org, a key."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from flowserve.auth import PRIVATE, PUBLIC
from flowserve.config import Settings
from flowserve.services import Services


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchServer:
    def __init__(self, tmp: Path, env: dict[str, str] | None = None, org: str = "bench") -> None:
        self.tmp, self.org, self.env = tmp, org, env or {}
        self.database_url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BenchServer:
        self.public_key, self.private_key = asyncio.run(self._make_org())
        self.auth = {"Authorization": f"Bearer {self.public_key}"}
        env = {
            **os.environ,
            "FLOWSERVE_DATABASE_URL": self.database_url,
            "FLOWSERVE_PORT": str(self.port),
            "FLOWSERVE_LOG_LEVEL": "warning",
            # the soak's flows use the scripted provider, which a server registers only then
            "FLOWSERVE_TEST_PROVIDERS": "true",
            **self.env,
        }
        self.log = (self.tmp / "server.log").open("wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flowserve", "serve"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    self.ready_after = time.perf_counter() - self.started
                    return self
            except httpx.HTTPError:
                time.sleep(0.02)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    async def _make_org(self) -> tuple[str, str]:
        state = Services.build(Settings(database_url=self.database_url))
        await state.db.create_schema()
        await state.keys.create_org(self.org)
        public = await state.keys.create_key(self.org, PUBLIC)
        private = await state.keys.create_key(self.org, PRIVATE)
        await state.aclose()
        return public.token, private.token

    def publish(self, text: str) -> None:
        r = httpx.post(
            f"{self.base_url}/v1/orgs/{self.org}/flows",
            content=text.encode(),
            headers={"Authorization": f"Bearer {self.private_key}"},
            timeout=30,
        )
        r.raise_for_status()
