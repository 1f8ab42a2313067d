"""What the cluster tests run on: the machine's PostgreSQL (127.0.0.1:5432) and Redis
(127.0.0.1:6379), a fresh database and Redis key prefix per test, and private servers of
both for the tests that stop or restart them (never the shared ones).

A test that needs a server that cannot be reached is skipped, except in CI (``CI=true``),
where it fails: there, a missing service is a broken setup, not a reason to test less.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.conftest import free_port

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379/0"


def missing(what: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is needed by this test and cannot be reached (CI)")
    pytest.skip(f"{what} cannot be reached")


async def _pg(statement: str, url: str = PG_ADMIN) -> None:
    import asyncpg

    admin = await asyncpg.connect(url, timeout=5)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


def redis_ping(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@pytest.fixture
def shared_redis() -> str:
    """The machine's Redis (each test uses its own key prefix)."""
    if not redis_ping(REDIS):
        missing("Redis on 127.0.0.1:6379")
    return REDIS


@pytest.fixture
def prefix() -> str:
    return f"fstest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped after the test."""
    name = f"flowserve_test_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    except Exception:
        missing("PostgreSQL on 127.0.0.1:5432")
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_pg(f'DROP DATABASE "{name}" WITH (FORCE)'))


def wait_until(check, timeout: float = 10.0, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(every)


@dataclass
class PrivateRedis:
    """A redis-server of our own (no persistence), to stop and start again."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: redis_ping(self.url), what="private redis-server up")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of our own in a temporary directory, on a free port."""

    port: int
    datadir: Path
    bindir: Path

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        log = self.datadir.parent / "postgres.log"
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(log), *args]
        subprocess.run(_as_postgres(command), check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir.parent}"
        self.ctl("-w", "-o", options, "start")

    def restart(self) -> None:
        self.ctl("-w", "-m", "fast", "stop")
        self.start()


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        missing("PostgreSQL's initdb (/usr/lib/postgresql/*/bin)")
    bindir = Path(found[-1]).parent
    base = Path(tempfile.mkdtemp(prefix="flowserve-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(base, "postgres")
        datadir = base / "data"
        subprocess.run(
            _as_postgres(
                [str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust"]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        server = PrivatePostgres(free_port(), datadir, bindir)
        server.start()
        try:
            yield server
        finally:
            subprocess.run(
                _as_postgres(
                    [str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"]
                ),
                capture_output=True,
                timeout=60,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
