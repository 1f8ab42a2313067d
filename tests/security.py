"""Helpers for the security tests: extra keys in a server's database, run records, and a
stream that is read a bit at a time while other requests are made."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

from flowserve.auth import PUBLIC
from flowserve.config import Settings
from flowserve.services import Services
from tests import sse
from tests.conftest import Server


def add_key(
    database_url: str,
    org: str,
    kind: str = PUBLIC,
    origins: Sequence[str] = (),
    rate_limit: int | None = None,
) -> str:
    """A new key in the database a running server uses (it reads keys on demand)."""

    async def go() -> str:
        state = Services.build(Settings(database_url=database_url, warm_up=False))
        try:
            await state.keys.create_org(org)
            key = await state.keys.create_key(org, kind, "", list(origins), rate_limit)
            return key.token
        finally:
            await state.aclose()

    return asyncio.run(go())


def record(server: Server, flow: str, run_id: str, org: str | None = None) -> dict[str, Any]:
    org = org or server.org
    url = f"{server.base_url}/inference/v0/run/{org}/{flow}/metadata?run_id={run_id}"
    r = httpx.get(url, headers=server.auth(server.private_key), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for_state(
    server: Server, flow: str, run_id: str, done: Callable[[str], bool], timeout: float = 10
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    rec = record(server, flow, run_id)
    while not done(rec["state"]) and time.monotonic() < deadline:
        time.sleep(0.05)
        rec = record(server, flow, run_id)
    return rec


def stop(server: Server, flow: str, run_id: str, key: str, org: str | None = None):
    org = org or server.org
    return httpx.post(
        f"{server.base_url}/inference/v0/stop/{org}/{flow}?run_id={run_id}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


class Stream:
    """One streaming request held open: read some of it, do other things, read the rest."""

    def __init__(
        self, url: str, key: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        self.client = httpx.Client(timeout=30)
        self._cm = self.client.stream(
            "POST",
            url,
            content=json.dumps(body if body is not None else {}),
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                **(headers or {}),
            },
        )
        self.response = self._cm.__enter__()
        self.status = self.response.status_code
        self._chunks: Iterator[str] = self.response.iter_text()
        self.text = ""
        self.ended = False

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_until(self, enough: Callable[[Stream], bool], timeout: float = 20) -> Stream:
        deadline = time.monotonic() + timeout
        while not enough(self) and not self.ended:
            assert time.monotonic() < deadline, f"timed out; got {self.text[-500:]!r}"
            try:
                self.text += next(self._chunks)
            except StopIteration:
                self.ended = True
        return self

    def read_to_end(self, timeout: float = 20) -> Stream:
        return self.read_until(lambda s: False, timeout)

    def messages(self) -> list[sse.Message]:
        """The SSE messages complete so far."""
        return list(sse.parse(self.text[: self.text.rfind("\n\n") + 2]))

    def frames(self) -> list[dict[str, Any]]:
        """The JSON-lines frames complete so far."""
        return [json.loads(line) for line in self.text[: self.text.rfind("\n") + 1].splitlines()]

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self.client.close()
