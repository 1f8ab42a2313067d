"""Schema migrations (Alembic, flowserve.store.schema): databases made before migrations
existed upgrade without losing a row, `serve` refuses a database that is behind and names
the command, and the migrated schema is exactly the models' — on SQLite and PostgreSQL.

The old databases are dumps made by flowserve's own code at two commits
(tests/fixtures/databases/make.py says how)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from flowserve.knowledge.models import modelled
from flowserve.store import schema
from flowserve.store.database import Database
from flowserve.store.models import Base
from tests.conftest import ROOT, start_server, stop_server

FIXTURES = ROOT / "tests" / "fixtures" / "databases"
OLD = ("20c4263", "142f94c")  # before runs had owners; the last commit before migrations
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TABLES = ("orgs", "api_keys", "flow_versions", "runs", "memory_turns")


def cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowserve", *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _pg(sql: str, database: str = "postgres") -> None:
    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{database}")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database (the machine's local server; CI starts it)."""
    name = f"flowserve_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_pg(f'DROP DATABASE "{name}" WITH (FORCE)'))


def load_old(commit: str, dialect: str, target: str) -> dict[str, str]:
    """Restore the dump of ``commit``'s database into ``target`` (a file, or a PostgreSQL
    database name); its keys."""
    dump = (FIXTURES / f"{commit}.{dialect}.sql").read_text()
    if dialect == "sqlite":
        with sqlite3.connect(target) as conn:
            conn.executescript(dump)
        return json.loads((FIXTURES / f"{commit}.keys.json").read_text())
    # psql's meta-commands (\restrict …) are not SQL; the rest is plain statements
    statements = "\n".join(line for line in dump.splitlines() if not line.startswith("\\"))
    asyncio.run(_pg(statements, target))
    return json.loads((FIXTURES / f"{commit}.pg-keys.json").read_text())


def rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the tables old databases have, by table, in key order."""

    async def go() -> dict[str, list[dict[str, Any]]]:
        db = Database(url)
        out: dict[str, list[dict[str, Any]]] = {}
        try:
            async with db.engine.connect() as conn:
                for table in TABLES:
                    result = await conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1")
                    out[table] = [dict(r._mapping) for r in result]
        finally:
            await db.aclose()
        return out

    return asyncio.run(go())


def migrate(url: str) -> None:
    async def go() -> None:
        db = Database(url)
        try:
            await db.create_schema()
        finally:
            await db.aclose()

    asyncio.run(go())


def diff_from_models(url: str) -> list[Any]:
    async def go() -> list[Any]:
        db = Database(url)
        try:
            async with db.engine.connect() as conn:
                # The full-text index (FTS5 table / tsvector column) is not modelled.
                opts = {"include_name": modelled}
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts=opts), Base.metadata
                    )
                )
        finally:
            await db.aclose()

    return asyncio.run(go())


def urls(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, str]:
    """(URL, restore target) of a new database of ``dialect``."""
    if dialect == "sqlite":
        path = tmp_path / "old.db"
        return f"sqlite+aiosqlite:///{path}", str(path)
    url = request.getfixturevalue("pg_url")
    return url, url.rsplit("/", 1)[1]


def test_the_head_the_server_checks_is_alembics():
    assert schema.head() == schema.alembic_head()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_new_database_is_migrated_to_exactly_the_models(dialect, tmp_path, request):
    url, _ = urls(dialect, tmp_path, request)
    migrate(url)
    assert diff_from_models(url) == []
    current = cli("db", "current", database_url=url)
    assert current.returncode == 0, current.stdout + current.stderr
    assert f"database: {schema.head()}" in current.stdout and "up to date" in current.stdout


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize("commit", OLD)
def test_an_old_database_upgrades_and_loses_nothing(commit, dialect, tmp_path, request):
    url, target = urls(dialect, tmp_path, request)
    keys = load_old(commit, dialect, target)
    before = rows(url)
    assert before["runs"] and before["api_keys"] and before["flow_versions"]

    # behind: `db current` says so, and serve refuses, naming the command
    current = cli("db", "current", database_url=url)
    assert current.returncode == 1 and "behind" in current.stdout
    refused = cli("serve", "--port", "1", database_url=url)
    assert refused.returncode == 2
    assert "flowserve db upgrade" in refused.stderr, refused.stderr
    assert rows(url) == before  # refusing changed nothing

    upgraded = cli("db", "upgrade", database_url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"to {schema.head()}" in upgraded.stdout
    again = cli("db", "upgrade", database_url=url)
    assert again.returncode == 0 and "nothing to do" in again.stdout

    after = rows(url)
    for table in TABLES:  # every row, every old column, unchanged
        assert [{k: r[k] for k in before[table][0]} for r in after[table]] == before[table]
    assert all(r["nodes"] is None for r in after["runs"])
    assert diff_from_models(url) == []

    # and a server on it serves the old keys, flows and run records
    server = start_server(tmp_path, database_url=url, keys=(keys["public"], keys["private"]))
    try:
        run_id = before["runs"][0]["id"]
        record = httpx.get(
            f"{server.base_url}/inference/v0/run/acme/support-bot/metadata",
            params={"run_id": run_id},
            headers=server.auth(server.private_key),
            timeout=10,
        )
        assert record.status_code == 200, record.text
        assert record.json()["outputs"] == {"out-0": "Open Settings, then Security."}
        flows = httpx.get(
            f"{server.base_url}/v1/orgs/acme/flows", headers=server.auth(server.private_key)
        )
        assert flows.status_code == 200
        assert [f["flow_id"] for f in flows.json()] == ["support-bot"]
    finally:
        stop_server(server)


@pytest.mark.slow
def test_serve_upgrade_migrates_at_start(tmp_path):
    path = tmp_path / "old.db"
    keys = load_old(OLD[-1], "sqlite", str(path))
    url = f"sqlite+aiosqlite:///{path}"
    server = start_server(
        tmp_path,
        database_url=url,
        keys=(keys["public"], keys["private"]),
        env={"FLOWSERVE_UPGRADE_SCHEMA": "true"},
    )
    stop_server(server)
    assert cli("db", "current", database_url=url).returncode == 0


def test_a_database_of_a_newer_flowserve_is_refused(tmp_path):
    path = tmp_path / "newer.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate(url)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    for args in (
        ("serve", "--port", "1"),
        ("serve", "--upgrade", "--port", "1"),
        ("db", "upgrade"),
    ):
        refused = cli(*args, database_url=url)
        assert refused.returncode != 0
        assert "newer flowserve" in refused.stderr, (args, refused.stderr)
    current = cli("db", "current", database_url=url)
    assert current.returncode == 1 and "ahead" in current.stdout


def test_an_empty_database_is_created_at_start(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
    made = cli("init", database_url=url)
    assert made.returncode == 0, made.stderr
    assert cli("db", "current", database_url=url).returncode == 0


def test_processes_upgrading_one_postgresql_database_together_migrate_it_once(pg_url):
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flowserve", "db", "upgrade", "--database-url", pg_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outcomes
    assert diff_from_models(pg_url) == []
