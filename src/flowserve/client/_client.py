"""``Client`` and ``AsyncClient`` over httpx.

Both speak the ``/inference/v0/*`` routes, which Stack AI's hosted API serves too, so the same
client works against either by changing ``base_url``. ``stream()`` reads JSON lines with
cumulative outputs (``delta=false``), so each :class:`Update` holds the whole text so far.

The run history (``list_runs``, ``iter_runs``, ``get_run``: ``/v1/orgs/{org}/runs``) is
flowserve's own and needs a private key; ``run_metadata`` is the ``/inference/v0`` route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

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


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of run history, newest first; ``next_cursor`` is None on the last page."""

    runs: list[dict[str, Any]]
    next_cursor: str | None


def _page(payload: dict[str, Any]) -> RunPage:
    return RunPage(list(payload.get("runs") or []), payload.get("next_cursor"))


def _timestamp(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("since and until must be timezone-aware datetimes")
    return value.isoformat()


def _history_params(
    flow_id: str | None,
    state: str | None,
    user_id: str | None,
    since: datetime | str | None,
    until: datetime | str | None,
    limit: int | None,
    cursor: str | None,
) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in (("flow_id", flow_id), ("state", state), ("user_id", user_id)):
        if value is not None:
            params[name] = value
    for name, when in (("since", since), ("until", until)):
        if when is not None:
            params[name] = _timestamp(when)
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    return params


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

    def _runs_url(self, run_id: str | None = None) -> str:
        url = f"{self.base_url}/v1/orgs/{quote(self.org, safe='')}/runs"
        return url if run_id is None else f"{url}/{quote(run_id, safe='')}"

    def _metadata_url(self, flow_id: str) -> str:
        return f"{self.base_url}/inference/v0/run/{self.org}/{flow_id}/metadata"


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

    def list_runs(
        self,
        *,
        flow_id: str | None = None,
        state: str | None = None,
        user_id: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> RunPage:
        """One page of the org's runs, newest first (private key). Pass the page's
        ``next_cursor`` as ``cursor``, with the same filters, for the next one."""
        params = _history_params(flow_id, state, user_id, since, until, limit, cursor)
        r = self._http.get(self._runs_url(), params=params)
        _raise_for(r, r.content)
        return _page(r.json())

    def iter_runs(
        self,
        *,
        flow_id: str | None = None,
        state: str | None = None,
        user_id: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int = 100,
    ) -> Iterator[dict[str, Any]]:
        """Every run that passes the filters, newest first, a page at a time."""
        cursor = None
        while True:
            page = self.list_runs(
                flow_id=flow_id,
                state=state,
                user_id=user_id,
                since=since,
                until=until,
                limit=page_size,
                cursor=cursor,
            )
            yield from page.runs
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_run(self, run_id: str) -> dict[str, Any]:
        """A run's whole record, with its per-node timings (private key)."""
        r = self._http.get(self._runs_url(run_id))
        _raise_for(r, r.content)
        result: dict[str, Any] = r.json()
        return result

    def run_metadata(self, flow_id: str, run_id: str) -> dict[str, Any]:
        """The record of one run of ``flow_id`` (``/inference/v0/.../metadata``; private key)."""
        r = self._http.get(self._metadata_url(flow_id), params={"run_id": run_id})
        _raise_for(r, r.content)
        result: dict[str, Any] = r.json()
        return result

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

    async def list_runs(
        self,
        *,
        flow_id: str | None = None,
        state: str | None = None,
        user_id: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> RunPage:
        """One page of the org's runs, newest first (private key). Pass the page's
        ``next_cursor`` as ``cursor``, with the same filters, for the next one."""
        params = _history_params(flow_id, state, user_id, since, until, limit, cursor)
        r = await self._http.get(self._runs_url(), params=params)
        _raise_for(r, r.content)
        return _page(r.json())

    async def iter_runs(
        self,
        *,
        flow_id: str | None = None,
        state: str | None = None,
        user_id: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every run that passes the filters, newest first, a page at a time."""
        cursor = None
        while True:
            page = await self.list_runs(
                flow_id=flow_id,
                state=state,
                user_id=user_id,
                since=since,
                until=until,
                limit=page_size,
                cursor=cursor,
            )
            for run in page.runs:
                yield run
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """A run's whole record, with its per-node timings (private key)."""
        r = await self._http.get(self._runs_url(run_id))
        _raise_for(r, r.content)
        result: dict[str, Any] = r.json()
        return result

    async def run_metadata(self, flow_id: str, run_id: str) -> dict[str, Any]:
        """The record of one run of ``flow_id`` (``/inference/v0/.../metadata``; private key)."""
        r = await self._http.get(self._metadata_url(flow_id), params={"run_id": run_id})
        _raise_for(r, r.content)
        result: dict[str, Any] = r.json()
        return result

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
