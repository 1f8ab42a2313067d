"""Where things are built: the services without HTTP (``flowserve run``), and what only the
server does to the process (the collector's tuning), not every program that embeds the app."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

from starlette.testclient import TestClient

from flowserve.config import Settings
from flowserve.http.app import create_app
from tests.conftest import FLOWS

CHECK = """
import json, sys
from typer.testing import CliRunner
from flowserve.cli import app
result = CliRunner().invoke(app, ["run", sys.argv[1], "-i", "in-0=a b c", "--json"])
web = ("flowserve.http", "starlette", "fastapi")
print(json.dumps({
    "code": result.exit_code,
    "outputs": json.loads(result.output.strip().splitlines()[-1]),
    "loaded": sorted(m for m in sys.modules if m.startswith(web)),
}))
"""


def test_a_local_run_does_not_import_the_http_package(tmp_path) -> None:
    env = {
        **os.environ,
        "FLOWSERVE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'run.db'}",
        "FLOWSERVE_TEST_PROVIDERS": "true",
    }
    out = subprocess.run(
        [sys.executable, "-c", CHECK, str(FLOWS / "echo.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert (seen["code"], seen["outputs"]) == (0, {"out-0": "a b c"})  # the run ran
    assert seen["loaded"] == []


def test_embedding_the_app_leaves_the_collector_alone(tmp_path) -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    app = create_app(
        Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'e.db'}", warm_up=False)
    )
    try:
        with TestClient(app) as client:
            assert client.get("/healthz").status_code == 200
        assert gc.get_threshold() == threshold
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_closing_the_services_closes_the_embedders(tmp_path) -> None:
    import asyncio

    from flowserve.services import Services

    async def go() -> tuple[int, int]:
        services = Services.build(
            Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}", warm_up=False)
        )
        embedders = services.knowledge.vectors.embedders
        vectors = await embedders.embed("local.smollm2-135m", ["hello there"])
        used = len(embedders._instances)
        await services.aclose()
        assert len(vectors) == 1
        return used, len(embedders._instances)

    used, left = asyncio.run(go())
    assert used == 1 and left == 0  # the local model was loaded, then let go
