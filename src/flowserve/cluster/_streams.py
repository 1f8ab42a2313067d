"""Runs' event logs in Redis streams, and the one task that writes them.

A run's log is ``P:run:<id>`` (its :class:`RunInfo`, written as soon as the log is opened,
so a stop or a resume finds the run before its database record exists) and
``P:events:<id>``, a stream whose entry ids are the events' own numbers (``0-1``, ``0-2``…)
so that "after n" is a plain ``XREAD``; an empty entry closes it. Both are kept
``retention`` seconds after the run ends (while it runs, the heartbeat keeps them), and the
stream is capped at about ``max_events`` entries.

``append`` never waits and never sends: it queues the run for the writer task, which sends
what every run appended since its last write in one pipelined round trip (one script call per
run), never one per token. Other background commands (run slots given back) ride along.
While Redis is unreachable the writer drops what it is given and counts the events in
``write_failures``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import anyio

from flowserve.cluster import _scripts
from flowserve.cluster._codec import decode_event, encode_event, encode_info
from flowserve.cluster._link import Command, Link
from flowserve.cluster.base import RunInfo
from flowserve.errors import NotFoundError
from flowserve.events import Event

log = logging.getLogger("flowserve.cluster")

READ_CHUNK = 1.0  # the longest single blocking read, below the socket timeout
READ_COUNT = 1000  # events per read
CLOSE_WAIT = 2.0  # how long closing a log waits for its last write
APPEND_SHA = hashlib.sha1(_scripts.APPEND.encode()).hexdigest()


class _Log:
    """One run's event log, written by the writer task."""

    __slots__ = ("closing", "done", "info", "logs", "pending", "queued", "registered", "seq")

    def __init__(self, logs: EventLogs, info: RunInfo) -> None:
        self.logs = logs
        self.info = info
        self.pending: list[Event] = []
        self.seq = 0  # the number of the last entry handed to the writer
        self.queued = False  # waiting for the writer
        self.registered = False  # its RunInfo is in Redis
        self.closing = False
        self.done: anyio.Event | None = None  # set once its last write is done

    def append(self, events: list[Event]) -> None:
        if events and not self.closing:
            self.pending.extend(events)
            if not self.queued:
                self.logs._queue(self)

    async def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.done = anyio.Event()
        if not self.queued:
            self.logs._queue(self)
        with anyio.move_on_after(CLOSE_WAIT):
            await self.done.wait()


class EventLogs:
    def __init__(self, link: Link, retention: float, max_events: int, running: float) -> None:
        self.link = link
        self.retention_ms = max(1, int(retention * 1000))
        # While a run runs, its keys live this long past the last heartbeat that kept them.
        self.running_ms = max(self.retention_ms, int(running * 1000))
        self.max_events = max_events
        self.write_failures = 0  # events dropped (Redis unreachable)
        self.open: dict[str, _Log] = {}  # this process's runs, until their log is closed
        self._dirty: list[_Log] = []
        self._later: list[Command] = []
        self._wake: anyio.Event | None = None

    def start(self, info: RunInfo) -> _Log:
        run_log = self.open[info.run_id] = _Log(self, info)
        self._queue(run_log)  # registered at once, before its first event
        return run_log

    def send_soon(self, commands: list[Command]) -> None:
        """With the next write (dropped if Redis is unreachable by then)."""
        self._later += commands
        self._wake_writer()

    def keep_commands(self, again: bool) -> list[Command]:
        """For the heartbeat: the open runs' keys kept alive (``again``: written anew, after
        an outage or a Redis that restarted empty)."""
        commands: list[Command] = []
        key, ttl = self.link.key, self.running_ms
        for run_log in self.open.values():
            run_id = run_log.info.run_id
            if again:
                info = encode_info(run_log.info)
                commands.append(("SET", key("run", run_id), info, "PX", ttl))
            else:
                commands.append(("PEXPIRE", key("run", run_id), ttl))
            commands.append(("PEXPIRE", key("events", run_id), ttl))
        return commands

    def _queue(self, run_log: _Log) -> None:
        run_log.queued = True
        self._dirty.append(run_log)
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def write(self) -> None:
        """The writer task: runs for as long as the process."""
        while True:
            if not self._dirty and not self._later:
                self._wake = anyio.Event()
                await self._wake.wait()
                self._wake = None
            logs, self._dirty = self._dirty, []
            later, self._later = self._later, []
            try:
                await self._flush(logs, later)
            except Exception:  # a bug, not Redis: lose this write, not the process
                log.exception("could not write run events to Redis")
                for run_log in logs:
                    if run_log.closing and run_log.done is not None:
                        self.open.pop(run_log.info.run_id, None)
                        run_log.done.set()

    async def _flush(self, logs: list[_Log], later: list[Command]) -> None:
        link = self.link
        commands = later if link.reachable else []
        counts: list[int] = []  # events of each log in this write
        for run_log in logs:
            run_log.queued = False
            batch, run_log.pending = run_log.pending, []
            counts.append(len(batch))
            first = run_log.seq + 1
            run_log.seq += len(batch) + run_log.closing  # the end marker has a number too
            if link.reachable:
                commands += self._log_commands(run_log, batch, first)
        failed = not link.reachable
        if commands and not failed:
            try:
                replies = await link.send(commands)
                if any(isinstance(reply, link.no_script) for reply in replies):
                    # Redis restarted empty: load the script, send what it refused again.
                    again = [
                        command
                        for command, reply in zip(commands, replies, strict=True)
                        if isinstance(reply, link.no_script)
                    ]
                    await link.send([("SCRIPT", "LOAD", _scripts.APPEND), *again])
            except link.errors as exc:
                link.lost(exc)
                failed = True
        for run_log, count in zip(logs, counts, strict=True):
            if failed:
                self.write_failures += count
                run_log.registered = False  # written again once Redis is back
            if run_log.closing:
                self.open.pop(run_log.info.run_id, None)
                if run_log.done is not None:
                    run_log.done.set()

    def _log_commands(self, run_log: _Log, batch: list[Event], first: int) -> list[Command]:
        key, run_id = self.link.key, run_log.info.run_id
        ttl = self.retention_ms if run_log.closing else self.running_ms
        commands: list[Command] = []
        if not run_log.registered:
            commands.append(("SET", key("run", run_id), encode_info(run_log.info), "PX", ttl))
            run_log.registered = True
        elif run_log.closing:
            commands.append(("PEXPIRE", key("run", run_id), ttl))
        payloads = [encode_event(event) for event in batch]
        if run_log.closing:
            payloads.append(b"")  # the end marker
        if payloads:
            stream = key("events", run_id)
            commands.append(
                ("EVALSHA", APPEND_SHA, 1, stream, self.max_events, ttl, first, *payloads)
            )
        return commands

    async def read(
        self, run_id: str, after: int, wait: float
    ) -> tuple[list[tuple[int, Event]], bool]:
        link = self.link
        stream: dict[Any, Any] = {link.key("events", run_id): f"0-{after}"}

        async def now() -> list[Any]:
            pipe = link.redis.pipeline(transaction=False)
            pipe.xread(stream, count=READ_COUNT)
            pipe.exists(link.key("run", run_id))
            return list(await pipe.execute())

        entries, known = await link.call(now)
        deadline = time.monotonic() + wait
        while not entries:
            if not known:
                raise NotFoundError(f"run {run_id!r} not found")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [], False
            block = max(1, int(min(remaining, READ_CHUNK) * 1000))

            async def later(block: int = block) -> Any:
                return await link.redis.xread(stream, count=READ_COUNT, block=block)

            entries = await link.call(later)
        events: list[tuple[int, Event]] = []
        for entry_id, fields in entries[0][1]:
            payload = fields[b"e"]
            if not payload:
                return events, True
            events.append((int(entry_id.split(b"-", 1)[1]), decode_event(payload)))
        return events, False
