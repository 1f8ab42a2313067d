"""The scale-out benchmark's deployments and what /proc says about everything they run on.

Three databases, one per deployment, each prepared (schema, org, keys, flows) before its
processes start:

* ``sqlite``: one ``flowserve serve`` on a fresh SQLite file, no Redis (the embedded default);
* ``pg``: one process on a fresh PostgreSQL database, no Redis;
* ``cluster``: two processes (A and B) sharing a fresh PostgreSQL database and the machine's
  Redis under a key prefix of their own.

PostgreSQL databases are created and dropped with asyncpg on the admin database. Every
process gets the abuse limits raised out of the way and key/flow cache ttls of 60 s, so that a
revocation or a publish seen by another process within the benchmark can only be the
cluster's invalidation, not an expired cache entry.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from _procs import cpu_seconds, spawn, stop
from _servers import FLOW_ID, ORG, free_port, relay_flow

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
PUB_FLOW = "pub"  # the template flow whose publishes B must see


def pub_flow(version: int) -> str:
    """A template-only flow (no provider): each publish changes its text, so a new version."""
    return f"""\
id: {PUB_FLOW}
inputs: {{in-0: {{default: "x"}}}}
nodes:
  tpl-0: {{type: template, template: "v{version} {{in-0}}"}}
outputs: {{out-0: tpl-0}}
"""


async def _admin(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@dataclass
class Keys:
    public: str
    private: str
    revocable: list[tuple[str, str]]  # (key id, token) of public keys to revoke one by one


@dataclass
class Deployment:
    """One database and the processes serving it."""

    name: str
    workdir: Path
    database_url: str
    pg_name: str | None = None  # the PostgreSQL database, to drop and to find its backends
    redis_prefix: str | None = None
    redis_url: str = REDIS_URL  # what its processes are given as FLOWSERVE_REDIS_URL
    keys: Keys | None = None
    nodes: list[Node] = field(default_factory=list)

    @classmethod
    def sqlite(cls, workdir: Path) -> Deployment:
        workdir.mkdir(parents=True, exist_ok=True)
        return cls("sqlite", workdir, f"sqlite+aiosqlite:///{workdir / 'flowserve.db'}")

    @classmethod
    def postgres(cls, name: str, workdir: Path, redis: str | None) -> Deployment:
        workdir.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:10]
        db = f"flowserve_scaleout_{name}_{tag}"
        asyncio.run(_admin(f'CREATE DATABASE "{db}"'))
        prefix = f"fs-scaleout-{tag}" if redis else None
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
        d = cls(name, workdir, url, pg_name=db, redis_prefix=prefix)
        d.redis_url = redis or REDIS_URL
        return d

    def prepare(self, upstream_v1: str, revocable: int) -> None:
        self.keys = asyncio.run(self._prepare(upstream_v1, revocable))

    async def _prepare(self, upstream_v1: str, revocable: int) -> Keys:
        from flowserve.auth import PRIVATE, PUBLIC
        from flowserve.config import Settings
        from flowserve.services import Services

        state = Services.build(Settings(database_url=self.database_url))
        try:
            await state.db.create_schema()
            await state.keys.create_org(ORG)
            public = await state.keys.create_key(ORG, PUBLIC)
            private = await state.keys.create_key(ORG, PRIVATE)
            extra = [await state.keys.create_key(ORG, PUBLIC) for _ in range(revocable)]
            await state.flows.publish(ORG, relay_flow(upstream_v1))
            await state.flows.publish(ORG, pub_flow(0))
        finally:
            await state.aclose()
        return Keys(public.token, private.token, [(k.key_id, k.token) for k in extra])

    def start(self, count: int) -> None:
        for i in range(count):
            node = Node(f"{self.name}-{'ab'[i] if count > 1 else 'a'}", self)
            node.start()
            self.nodes.append(node)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def run_states(self) -> dict[str, int]:
        """Its run records by state (after its processes stopped: every run must be final)."""
        query = "SELECT state, count(*) FROM runs GROUP BY state"
        if self.pg_name is None:
            import sqlite3

            with sqlite3.connect(self.workdir / "flowserve.db") as db:
                return {state: n for state, n in db.execute(query)}

        async def fetch() -> dict[str, int]:
            import asyncpg

            conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{self.pg_name}")
            try:
                return {r[0]: r[1] for r in await conn.fetch(query)}
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def drop(self) -> None:
        """Its PostgreSQL database, and its keys in Redis (they would expire by themselves
        after ``event_retention``, 5 minutes; the Redis is shared)."""
        if self.redis_prefix is not None:
            import redis

            client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
            try:
                batch: list[bytes] = []
                for key in client.scan_iter(match=f"{self.redis_prefix}:*", count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        client.unlink(*batch)
                        batch = []
                if batch:
                    client.unlink(*batch)
            finally:
                client.close()
        if self.pg_name is not None:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)'))


class Node:
    """One ``flowserve serve`` process of a deployment."""

    def __init__(self, name: str, deployment: Deployment) -> None:
        self.name = name
        self.deployment = deployment
        self.log = deployment.workdir / f"{name}.log"

    def start(self) -> None:
        d = self.deployment
        self.port = free_port()
        env = {
            "FLOWSERVE_DATABASE_URL": d.database_url,
            "FLOWSERVE_PORT": str(self.port),
            "FLOWSERVE_HOST": "127.0.0.1",
            "FLOWSERVE_LOG_LEVEL": "warning",
            "FLOWSERVE_WARM_UP": "false",
            "FLOWSERVE_RATE_LIMIT_PER_MINUTE": "0",
            "FLOWSERVE_MAX_CONCURRENT_RUNS_PER_KEY": "1000000",
            "FLOWSERVE_MAX_CONCURRENT_RUNS": "1000000",
            "FLOWSERVE_KEY_CACHE_TTL": "60",
            "FLOWSERVE_FLOW_CACHE_TTL": "60",
            "FLOWSERVE_DRAIN_SECONDS": "2",
        }
        if d.redis_prefix is not None:
            env["FLOWSERVE_REDIS_URL"] = d.redis_url
            env["FLOWSERVE_REDIS_PREFIX"] = d.redis_prefix
        inherited = tuple(k for k in os.environ if k.startswith("FLOWSERVE_"))
        self.process = spawn(
            [sys.executable, "-m", "flowserve", "serve"],
            self.log,
            env=env,
            cwd=d.workdir,
            unset=inherited,
        )
        self.pid = self.process.pid

    def stop(self) -> None:
        if getattr(self, "process", None) is not None:
            stop(self.process, timeout=30)

    def log_problems(self) -> dict[str, int]:
        """What its log complained of (it logs at warning and up): each message, without its
        time stamp, and how many times; tracebacks count once, by their last line."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return {}
        out: dict[str, int] = {}
        for line in lines:
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                message = f"{parts[2]} {parts[3]}"
            elif line and not line.startswith((" ", "Traceback")) and "Error" in line:
                message = line  # a traceback's last line
            else:
                continue
            message = message[:160]
            out[message] = out.get(message, 0) + 1
        return out

    def metrics(self) -> dict[str, float]:
        """The counters of its /metrics that say something was lost, summed over labels."""
        import httpx

        names = (
            "flowserve_event_log_write_failures_total",
            "flowserve_run_record_write_failures_total",
            "flowserve_provider_errors_total",
        )
        out = dict.fromkeys(names, 0.0)
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        except httpx.HTTPError as exc:
            return {"unreadable": 1.0, "error": float(len(str(exc)))}
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in out:
                out[name] += float(line.rsplit(" ", 1)[1])
        return out


# -- where the CPU goes --------------------------------------------------------------------


def redis_pid() -> int | None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None
    finally:
        client.close()


async def pg_pids(databases: list[str]) -> tuple[list[int], list[int]]:
    """(backends connected to ``databases``, PostgreSQL's background processes)."""
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=10)
    try:
        rows = await conn.fetch("SELECT pid, datname, backend_type FROM pg_stat_activity")
    finally:
        await conn.close()
    ours = [r["pid"] for r in rows if r["datname"] in databases]
    background = [r["pid"] for r in rows if r["datname"] is None and r["backend_type"]]
    return ours, background


class CpuMeter:
    """CPU-seconds of every process the benchmark measures, between ``begin`` and ``end``:
    each flowserve process, the fake upstream, this load generator, Redis, the PostgreSQL
    backends of the benchmark's databases, and PostgreSQL's background processes (shared
    with whatever else uses that server)."""

    def __init__(self, nodes: list[Node], fake_pid: int, pg_databases: list[str]) -> None:
        self.nodes, self.fake_pid, self.pg_databases = nodes, fake_pid, pg_databases
        self.redis = redis_pid()

    async def _sample(self) -> dict[str, dict[int, float]]:
        ours, background = await pg_pids(self.pg_databases)
        single = {p: cpu_seconds(p, with_children=False) for p in ours}
        return {
            **{n.name: {n.pid: cpu_seconds(n.pid)} for n in self.nodes},
            "fake upstream": {self.fake_pid: cpu_seconds(self.fake_pid)},
            "load generator": {0: sum(os.times()[:2])},
            "redis": {self.redis: cpu_seconds(self.redis, False)} if self.redis else {},
            "postgres (our backends)": single,
            "postgres (background)": {p: cpu_seconds(p, False) for p in background},
        }

    async def begin(self) -> None:
        self.t0 = time.perf_counter()
        self.s0 = await self._sample()

    async def end(self) -> dict[str, float]:
        """CPU-seconds per process group since ``begin`` (and ``wall``)."""
        s1 = await self._sample()
        wall = time.perf_counter() - self.t0
        out = {"wall": wall}
        for group, now in s1.items():
            before = self.s0.get(group, {})
            # A backend that was not there at the start began at (about) zero.
            out[group] = sum(max(v - before.get(p, 0.0), 0.0) for p, v in now.items())
        return out


_PROBE = """\
import time
n, end = 0, time.perf_counter() + {seconds}
while time.perf_counter() < end:
    for _ in range(10_000):
        n += 1
print(n)
"""


def cpu_probe(seconds: float = 2.0) -> dict[str, float]:
    """How much work two busy processes get done at once against one alone: a pure-Python
    loop for ``seconds``, alone, then two at once. 2.0 is two real cores; less, cores that
    share something underneath (SMT siblings on the host, a contended host) or other load."""
    import subprocess

    def run(k: int) -> list[int]:
        code = _PROBE.format(seconds=seconds)
        procs = [
            subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
            for _ in range(k)
        ]
        return [int(p.communicate(timeout=seconds + 30)[0]) for p in procs]

    one = run(1)[0]
    two = run(2)
    return {"seconds": seconds, "one_alone": one, "two_at_once": sum(two), "x": sum(two) / one}


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def wait_up(nodes: list[Node], seconds: float = 90.0) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    for node in nodes:
        while True:
            if node.process.poll() is not None:
                raise RuntimeError(f"{node.name} exited: see {node.log}")
            try:
                if httpx.get(f"http://127.0.0.1:{node.port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not answer /healthz within {seconds:g} s")
            time.sleep(0.05)


__all__ = [
    "FLOW_ID",
    "ORG",
    "PUB_FLOW",
    "CpuMeter",
    "Deployment",
    "Node",
    "cpu_probe",
    "loadavg",
    "pub_flow",
]
