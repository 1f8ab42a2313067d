"""Read-through caches for what every run request looks up: its API key and its flow's latest
version. Values are good for ``ttl`` seconds (the bound on how long another process's change,
a revoked key or a newly published version, can go unseen).

Written by hand because the plain expiring cache these replaced put the database back on the
request path all at once: when an entry expired, every request in flight missed together and
each queued its own query behind the one database thread (ten streams started together waited
up to 35 ms for their first token, against 9 ms with entries that never expire), and at low
load one request in a few paid a query. Here, once an entry is past half its ``ttl``, a read
still returns it at once and starts one refresh in the background; only an entry past its
whole ``ttl`` (an idle server) makes readers wait, and then they share one load. A full cache
(``max_entries``) drops its least recently read entry for a new one: one reader pays one
load, where emptying the cache would send every request in flight to the database at once.

With several processes, a change made by one (a key revoked, a flow published) reaches the
others' caches as an invalidation message (``flowserve.cluster``) rather than after the ttl:
:meth:`RefreshingCache.invalidate`, :meth:`~RefreshingCache.drop_where` or
:meth:`~RefreshingCache.clear`. A load that was under way when one came in is not kept (it
may have read the old value).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from flowserve.errors import FlowserveError

K = TypeVar("K")
V = TypeVar("V")
Load = Callable[[], Awaitable[V]]
Spawn = Callable[..., Any]  # a task group's start_soon

log = logging.getLogger("flowserve")


class RefreshingCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.spawn: Spawn | None = None  # set by the app: background refreshes run in its group
        # least recently read first: a hit moves its entry to the end
        self._entries: OrderedDict[K, tuple[float, V, Load[V]]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V]] = {}
        self._invalidations = 0  # a load that saw this change does not store its value

    async def get(self, key: K, load: Load[V], reload: Load[V] | None = None) -> V:
        """The cached value, else ``load()``'s. ``reload`` (default: ``load``) is what a
        background refresh calls: it may need less than the first load did (an API key's
        refresh re-reads the key's row, it does not keep the secret to check it again)."""
        entry = self._entries.get(key)
        if entry is not None:
            age = time.monotonic() - entry[0]
            if age < self.ttl:
                self._entries.move_to_end(key)
                if age >= self.ttl / 2 and self.spawn is not None and key not in self._loading:
                    self.spawn(self._refresh, key, entry[2])
                return entry[1]
        return await self._load(key, load, reload or load)

    def invalidate(self, key: K) -> None:
        self._entries.pop(key, None)
        self._invalidations += 1

    def drop_where(self, matches: Callable[[V], bool]) -> None:
        """Drop every entry whose value ``matches`` (a look at each: for invalidations only,
        never on the request path)."""
        for key in [k for k, (_, value, _) in self._entries.items() if matches(value)]:
            del self._entries[key]
        self._invalidations += 1

    def clear(self) -> None:
        self._entries.clear()
        self._invalidations += 1

    async def _load(self, key: K, load: Load[V], reload: Load[V]) -> V:
        """One load per key at a time; concurrent readers wait for it and share its result or
        its error. If the loading request is cancelled, a waiter loads for itself."""
        while (pending := self._loading.get(key)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled() or _being_cancelled():
                    raise
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        invalidations = self._invalidations
        try:
            value = await load()
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning without waiters
            else:
                future.cancel()
            raise
        else:
            future.set_result(value)
            if invalidations == self._invalidations:
                self._store(key, value, reload)
            return value
        finally:
            self._loading.pop(key, None)

    async def _refresh(self, key: K, reload: Load[V]) -> None:
        try:
            await self._load(key, reload, reload)
        except Exception as exc:
            # Gone or refused now (a revoked key, a deleted flow): forget it, so the next read
            # loads and fails for itself. Anything else (database down) keeps the entry
            # until its ttl.
            if isinstance(exc, FlowserveError):
                self._entries.pop(key, None)
            else:
                log.warning("background refresh failed: %s", type(exc).__name__)

    def _store(self, key: K, value: V, load: Load[V]) -> None:
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)
        elif entries and len(entries) >= self.max_entries:
            entries.popitem(last=False)  # the least recently read
        entries[key] = (time.monotonic(), value, load)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
