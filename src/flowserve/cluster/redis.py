"""Redis: what the processes of one deployment share (``FLOWSERVE_REDIS_URL``).

Keys, all under ``redis_prefix`` (``P``):

- ``P:rate:<key id>``: a key's token bucket. ``P:slots:<key id>`` and ``P:slots``: the run
  slots of a key and of everyone, sorted sets of slot ids scored by when they expire. One
  script (``_scripts.ADMIT``) counts a request and takes a slot: one round trip per
  admission. Each process pushes its own slots' expiry forward at every heartbeat, so the
  slots of a process that died expire by themselves three heartbeats after its last (6 s
  by default): nothing leaks, and no process has to clean up after another;
- ``P:alive:<owner>``: a process's liveness, expiring three heartbeats after its last;
- ``P:run:<run id>``, ``P:events:<run id>``: a run and its events (``flowserve.cluster.
  _streams``); ``P:watch:<run id>``: a client elsewhere follows it;
- channels ``P:stop:<owner>`` (stops for that process's runs) and ``P:invalidate``.

**Redis unreachable** (``flowserve.cluster._link``): nothing waits on it until a heartbeat
gets through again, tried every ``RECONNECT``. Meanwhile each process counts the limits
alone, over all its runs (:class:`~flowserve.cluster.local.LocalLimits`), so the limits are
per process; events are dropped and counted; stops and invalidations reach this process
only; lookups answer 503. Once it is back, the heartbeat puts this process's slots and open
runs back, and every cache is emptied (an invalidation may have been missed).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from typing import Any

import anyio

from flowserve.cluster import _scripts
from flowserve.cluster._codec import (
    decode_info,
    decode_invalidation,
    decode_stop,
    encode_invalidation,
    encode_stop,
)
from flowserve.cluster._link import Command, Link
from flowserve.cluster._streams import EventLogs, _Log
from flowserve.cluster.base import (
    SLOT_RETRY_AFTER,
    Admission,
    Invalidation,
    InvalidationHandler,
    RunInfo,
    Spawn,
    StopHandler,
)
from flowserve.cluster.local import NO_LOG, LocalLimits, _NoLog
from flowserve.events import Event

log = logging.getLogger("flowserve.cluster")

HEARTBEAT = 2.0  # at most, seconds between a process's heartbeats to Redis
LIVENESS = 3 * HEARTBEAT  # a process, and its run slots, expire this long after its last
RECONNECT = 0.5  # seconds between tries while Redis is unreachable
REFRESH_SHA = hashlib.sha1(_scripts.REFRESH.encode()).hexdigest()


class RedisCluster:
    shared = True

    def __init__(
        self,
        url: str,
        owner: str,
        prefix: str = "flowserve",
        retention: float = 300.0,
        max_events: int = 100_000,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self.owner = owner
        self.heartbeat = heartbeat
        self.liveness = 3 * heartbeat  # a process, and its slots, expire this long after
        self.link = link = Link(url, prefix)
        self.logs = EventLogs(link, retention, max_events, running=5 * heartbeat)
        self._admit = link.redis.register_script(_scripts.ADMIT)
        self._resync = True  # the next heartbeat puts everything of this process back
        self._last_beat = 0.0
        self._local = LocalLimits()  # this process's runs; its limits while unreachable
        self._held: dict[str, str] = {}  # slot id -> key id, every slot this process holds
        self._slot_ids = itertools.count(1)
        self._spawn: Spawn | None = None
        self._on_stop: StopHandler | None = None
        self._on_invalidate: InvalidationHandler | None = None
        self._stop_channel = link.key("stop", owner)
        self._invalidate_channel = f"{prefix}:invalidate"
        self._total = f"{prefix}:slots"

    @property
    def write_failures(self) -> int:
        return self.logs.write_failures

    # -- lifecycle --------------------------------------------------------------------
    async def start(
        self, on_stop: StopHandler, on_invalidate: InvalidationHandler, spawn: Spawn | None
    ) -> None:
        self._on_stop, self._on_invalidate, self._spawn = on_stop, on_invalidate, spawn
        if spawn is None:  # a command-line process: it only sends
            try:
                await self.link.redis.ping()
            except self.link.errors as exc:
                self.link.lost(exc)
            return
        await self._beat()
        spawn(self._keep_alive)
        spawn(self._listen)
        spawn(self.logs.write)

    async def aclose(self) -> None:
        link = self.link
        with anyio.move_on_after(2.0, shield=True):
            try:
                if self._spawn is not None and link.reachable:  # gone at once, not in 6 s
                    await link.send([("DEL", link.key("alive", self.owner))])
            except link.errors:
                pass
            finally:
                await link.aclose()

    def status(self) -> dict[str, str]:
        return {"backend": "redis", "state": "ok" if self.link.reachable else "unreachable"}

    async def _keep_alive(self) -> None:
        while True:
            await anyio.sleep(self.heartbeat if self.link.reachable else RECONNECT)
            try:
                await self._beat()
            except Exception:  # a bug, not Redis (its errors are handled): beat again later
                log.exception("cluster heartbeat failed")

    async def _beat(self) -> None:
        """Liveness, the slots' expiry and the open runs' keys pushed forward; all of it put
        back after an outage, a stall, or a Redis that restarted empty."""
        link = self.link
        now = time.monotonic()
        stale = now - self._last_beat > self.liveness / 2  # stalled: its slots may be gone
        again = self._resync or not link.reachable or stale
        self._resync = False
        liveness = int(self.liveness * 1000)
        commands: list[Command] = []
        if again:
            commands += [("SCRIPT", "LOAD", text) for text in (_scripts.REFRESH, _scripts.APPEND)]
        commands.append(("SET", link.key("alive", self.owner), b"1", "PX", liveness))
        if self._held:
            ids, keys = [], []
            for slot_id, key_id in self._held.items():
                ids.append(slot_id)
                keys.append(link.key("slots", key_id))
            mode = "ADD" if again else "XX"
            refresh = ("EVALSHA", REFRESH_SHA, 1 + len(keys), self._total, *keys)
            commands.append((*refresh, liveness, mode, *ids))
        commands += self.logs.keep_commands(again)
        try:
            replies = await link.send(commands)
        except link.errors as exc:
            link.lost(exc)
            return
        if any(isinstance(reply, link.no_script) for reply in replies):
            self._resync = True  # Redis restarted between two heartbeats: all again
        self._last_beat = now
        link.regained()

    # -- limits -----------------------------------------------------------------------
    def admit_now(
        self, key_id: str, per_minute: int, max_per_key: int, max_total: int, slot: bool
    ) -> Admission | None:
        if self.link.reachable:
            return None
        return self._admit_here(key_id, per_minute, max_per_key, max_total, slot)

    def _admit_here(
        self, key_id: str, per_minute: int, max_per_key: int, max_total: int, slot: bool
    ) -> Admission:
        verdict, wait, _ = self._local.admit(key_id, per_minute, max_per_key, max_total, slot)
        if verdict != "ok" or not slot:
            return verdict, wait, ""
        slot_id = self._new_slot()
        self._held[slot_id] = key_id  # in Redis too once it is back (the heartbeat)
        return "ok", 0.0, slot_id

    def _new_slot(self) -> str:
        return f"{self.owner}:{next(self._slot_ids)}"

    async def admit(
        self, key_id: str, per_minute: int, max_per_key: int, max_total: int, slot: bool
    ) -> Admission:
        link = self.link
        slot_id = self._new_slot() if slot else ""
        keys = [link.key("rate", key_id), link.key("slots", key_id), self._total]
        args: list[int | str] = [per_minute, max_per_key, max_total, slot_id]
        args.append(int(self.liveness * 1000))
        try:
            verdict_raw, wait_raw = await self._admit(keys=keys, args=args)
        except link.down_errors as exc:
            link.lost(exc)
            return self._admit_here(key_id, per_minute, max_per_key, max_total, slot)
        except link.errors:
            log.exception("Redis refused an admission: counted in this process instead")
            return self._admit_here(key_id, per_minute, max_per_key, max_total, slot)
        verdict = verdict_raw.decode()
        if verdict == "rate":
            return verdict, float(wait_raw), ""
        if verdict != "ok":
            return verdict, SLOT_RETRY_AFTER, ""
        if slot:
            self._held[slot_id] = key_id
            self._local.hold(key_id)
        return "ok", 0.0, slot_id

    def release(self, key_id: str, slot_id: str) -> None:
        if self._held.pop(slot_id, None) is None:
            return
        self._local.release(key_id)
        if self.link.reachable and self._spawn is not None:
            # If this is lost, the slot is no longer refreshed: it expires by itself.
            self.logs.send_soon(
                [("ZREM", self.link.key("slots", key_id), slot_id), ("ZREM", self._total, slot_id)]
            )

    # -- messages ---------------------------------------------------------------------
    async def stop(self, info: RunInfo, reason: str) -> bool:
        if info.owner == self.owner:
            return self._on_stop is not None and self._on_stop(info.run_id, reason)
        link = self.link
        channel = link.key("stop", info.owner)
        message = encode_stop(info.run_id, reason)
        return bool(await link.call(lambda: link.redis.publish(channel, message)))

    async def invalidate(self, message: Invalidation) -> None:
        if self._on_invalidate is not None:
            self._on_invalidate(message)  # here at once; the others through Redis
        link = self.link
        if not link.reachable:
            return
        try:
            await link.redis.publish(self._invalidate_channel, encode_invalidation(message))
        except link.errors as exc:
            link.lost(exc)

    async def _listen(self) -> None:
        link = self.link
        stop_channel = self._stop_channel.encode()
        while True:
            pubsub = link.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._stop_channel, self._invalidate_channel)
                # Subscribed (again): what was published while we were not is lost.
                if self._on_invalidate is not None:
                    self._on_invalidate(Invalidation())
                outages = link.outages
                while outages == link.outages:  # an outage seen elsewhere: subscribe again
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._deliver(message, stop_channel)
            except link.errors as exc:
                link.lost(exc)
                self._resync = True
                await anyio.sleep(RECONNECT)
            except Exception:  # a bug, not Redis: listen again
                log.exception("cluster listener failed")
                await anyio.sleep(RECONNECT)
            finally:
                with anyio.move_on_after(1.0, shield=True):
                    await pubsub.aclose()

    def _deliver(self, message: dict[str, Any], stop_channel: bytes) -> None:
        try:
            if message["channel"] == stop_channel:
                run_id, reason = decode_stop(message["data"])
                if self._on_stop is not None:
                    self._on_stop(run_id, reason)
            elif self._on_invalidate is not None:
                self._on_invalidate(decode_invalidation(message["data"]))
        except Exception:
            log.exception("could not handle a cluster message")

    # -- runs and their events --------------------------------------------------------
    def open_log(self, info: RunInfo) -> _Log | _NoLog:
        if self._spawn is None:  # nothing would write it
            return NO_LOG
        return self.logs.start(info)

    async def lookup(self, run_id: str) -> RunInfo | None:
        run_log = self.logs.open.get(run_id)
        if run_log is not None:
            return run_log.info
        link = self.link
        data = await link.call(lambda: link.redis.get(link.key("run", run_id)))
        return None if data is None else decode_info(data)

    async def read(
        self, run_id: str, after: int, wait: float
    ) -> tuple[list[tuple[int, Event]], bool]:
        return await self.logs.read(run_id, after, wait)

    async def owner_alive(self, owner: str) -> bool:
        if owner == self.owner:
            return True
        link = self.link
        return bool(await link.call(lambda: link.redis.exists(link.key("alive", owner))))

    async def watch(self, run_id: str, seconds: float) -> None:
        link, px = self.link, max(1, int(seconds * 1000))
        await link.call(lambda: link.redis.set(link.key("watch", run_id), b"1", px=px))

    async def watched(self, run_id: str) -> bool:
        link = self.link
        if not link.reachable:
            return False  # nobody can follow it from elsewhere meanwhile
        try:
            return bool(await link.redis.exists(link.key("watch", run_id)))
        except link.errors as exc:
            link.lost(exc)
            return False
