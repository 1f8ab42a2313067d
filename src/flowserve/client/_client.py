"""``Client`` and ``AsyncClient`` over httpx.

Both speak the ``/inference/v0/*`` routes, which Stack AI's hosted API serves too, so the same
client works against either by changing ``base_url``. ``stream()`` reads JSON lines with
cumulative outputs (``delta=false``), so each :class:`Update` holds the whole text so far.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from flowserve.errors import APIError, RunFailedError

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=30.0, pool=30.0)


@dataclass(frozen=True, slots=True)
class Update:
    """One frame of a streaming run."""

    outputs: dict[str, str]
    run_id: str | None
    state: str  # RUNNING, then COMPLETED / FAILED / CANCELLED
    error: str | None = None
    metadata: dict[str, Any] | None = None
    progress: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.state != "RUNNING"


def _update(frame: dict[str, Any]) -> Update:
    return Update(
        outputs=frame.get("outputs") or {},
        run_id=frame.get("run_id"),
        state=frame.get("state") or "RUNNING",
        error=frame.get("error"),
        metadata=frame.get("metadata"),
        progress=frame.get("progress_data"),
    )


def _raise_for(response: httpx.Response, body: bytes) -> None:
    if response.status_code < 400:
        return
    detail: Any = None
    try:
        detail = orjson.loads(body).get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        detail = body.decode("utf-8", "replace")[:500]
    if isinstance(detail, list):
        message = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}"
            for d in detail
            if isinstance(d, dict)
        )
    else:
        message = str(detail or response.reason_phrase)
    retry = response.headers.get("retry-after")
    retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    raise APIError(message, response.status_code, detail, retry_after)


def _check_final(update: Update) -> None:
    if update.state in ("FAILED", "CANCELLED"):
        node = (update.metadata or {}).get("node_id")
        raise RunFailedError(
            update.error or update.state.lower(), update.run_id, node, update.outputs
        )


class _Base:
    def __init__(self, base_url: str, api_key: str, org: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.org = org
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def _request(
        self,
        route: str,
        flow_id: str,
        inputs: Mapping[str, str],
        user_id: str | None,
        version: int | None,
    ) -> dict[str, Any]:
        """The arguments of the httpx call for ``/inference/v0/{route}`` (run or stream)."""
        body = dict(inputs)
        if user_id is not None:
            body["user_id"] = user_id
        params = {"delta": "false", "sse": "false"} if route == "stream" else {}
        if version is not None:
            params["version"] = str(version)
        return {
            "url": f"{self.base_url}/inference/v0/{route}/{self.org}/{flow_id}",
            "content": orjson.dumps(body),
            "params": params,
            "headers": {"Content-Type": "application/json"},
        }


class Client(_Base):
    """Blocking client. ``run()`` returns the outputs; ``stream()`` yields updates live."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        org: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, org)
        self._http = httpx.Client(timeout=timeout, transport=transport, headers=self.headers)

    def run(
        self,
        flow_id: str,
        inputs: Mapping[str, str],
        *,
        user_id: str | None = None,
        version: int | None = None,
    ) -> dict[str, str]:
        r = self._http.post(**self._request("run", flow_id, inputs, user_id, version))
        _raise_for(r, r.content)
        update = _update(r.json())
        _check_final(update)
        return update.outputs

    def stream(
        self,
        flow_id: str,
        inputs: Mapping[str, str],
        *,
        user_id: str | None = None,
        version: int | None = None,
    ) -> Iterator[Update]:
        request = self._request("stream", flow_id, inputs, user_id, version)
        with self._http.stream("POST", **request) as r:
            if r.status_code >= 400:
                _raise_for(r, r.read())
            for line in r.iter_lines():
                if line.strip():
                    update = _update(orjson.loads(line))
                    _check_final(update)
                    yield update

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The same as :class:`Client`, for asyncio/anyio code."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        org: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, org)
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, headers=self.headers)

    async def run(
        self,
        flow_id: str,
        inputs: Mapping[str, str],
        *,
        user_id: str | None = None,
        version: int | None = None,
    ) -> dict[str, str]:
        r = await self._http.post(**self._request("run", flow_id, inputs, user_id, version))
        _raise_for(r, r.content)
        update = _update(r.json())
        _check_final(update)
        return update.outputs

    async def stream(
        self,
        flow_id: str,
        inputs: Mapping[str, str],
        *,
        user_id: str | None = None,
        version: int | None = None,
    ) -> AsyncIterator[Update]:
        request = self._request("stream", flow_id, inputs, user_id, version)
        async with self._http.stream("POST", **request) as r:
            if r.status_code >= 400:
                _raise_for(r, await r.aread())
            async for line in r.aiter_lines():
                if line.strip():
                    update = _update(orjson.loads(line))
                    _check_final(update)
                    yield update

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
