"""The interface every cluster backend implements, and the vocabulary it speaks.

A backend answers four questions for the processes of one deployment:

- **limits**: may this key start a run now (rate per minute, runs in flight per key and in
  all)? Counted once for every process, so two processes do not double a limit;
- **messages**: a stop for a run that another process owns; a key revoked or a flow
  published, so that caches everywhere drop it at once rather than after their ttl;
- **runs**: which process owns a run (:class:`RunInfo`), so a stop or a resume can find it;
- **event logs**: each run's events in order, numbered from 1, kept for ``retention``
  seconds after the run ends, read from any process (:class:`EventLog`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from flowserve.events import Event


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Who owns a run and whose it is: enough to check a stop or a resume without the
    database (a young run is not recorded yet)."""

    run_id: str
    owner: str  # the owning process's instance id
    org_id: str
    flow_id: str
    flow_version: int
    key_id: str | None
    user_id: str | None
    inputs: dict[str, str]  # for a process that resumes it: outputs that are inputs


@dataclass(frozen=True, slots=True)
class Invalidation:
    """Drop a cached API key (by key id) or a flow's cached latest version; with nothing
    named, everything cached (a process back from a Redis outage may have missed some)."""

    key_id: str | None = None
    org_id: str | None = None
    flow_id: str | None = None


# What a process does with a message: stop one of its runs (by id, with the reason; True if
# it had that run and stopped it), or drop cache entries. Set by the composition root
# (flowserve.services).
StopHandler = Callable[[str, str], bool]
InvalidationHandler = Callable[[Invalidation], None]

# An admission's answer: ("ok", 0.0, slot id), or the refusal, the seconds to wait and "":
# ("rate", s) → 429, ("key", s) → 429, ("total", s) → 503. The slot id is "" when no slot was
# asked for, and for a slot counted in this process only.
Admission = tuple[str, float, str]
# Seconds a request refused a run slot is told to wait: when one frees cannot be known, and
# runs are short.
SLOT_RETRY_AFTER = 1.0


class EventLog(Protocol):
    """One run's events, written by its owner. ``append`` never waits: the backend batches
    what a loop turn appended into one write (never one round trip per token)."""

    def append(self, events: list[Event]) -> None: ...

    async def close(self) -> None:
        """The run ended: write what is left, keep it for the retention time."""
        ...


class Cluster(Protocol):
    owner: str  # this process's instance id
    shared: bool  # False: this process alone (LocalCluster), nothing to write or ask

    @property
    def write_failures(self) -> int:
        """Events dropped from event logs (Redis unreachable), for /metrics."""
        ...

    async def start(
        self, on_stop: StopHandler, on_invalidate: InvalidationHandler, spawn: Spawn | None
    ) -> None:
        """Connect, and listen for messages in the caller's task group (``spawn``: its
        ``start_soon``). Without ``spawn`` (a command-line process) nothing is listened to
        and no run is logged: the process only sends (``invalidate``)."""
        ...

    async def aclose(self) -> None: ...

    def status(self) -> dict[str, str]:
        """For /healthz: ``{"backend": "local"|"redis", "state": "ok"|"unreachable", …}``."""
        ...

    # -- limits -----------------------------------------------------------------------
    def admit_now(
        self, key_id: str, per_minute: int, max_per_key: int, max_total: int, slot: bool
    ) -> Admission | None:
        """:meth:`admit` decided in this process without waiting (the local backend; Redis
        while it is unreachable), or None: await :meth:`admit`."""
        ...

    async def admit(
        self, key_id: str, per_minute: int, max_per_key: int, max_total: int, slot: bool
    ) -> Admission:
        """Count a request against the key's rate (``per_minute`` 0: none) and, with
        ``slot``, take a run slot, all at once (see :data:`Admission`). A refused slot has
        still counted against the rate."""
        ...

    def release(self, key_id: str, slot_id: str) -> None:
        """Give a slot back (never waits: a write it needs is sent in the background)."""
        ...

    # -- messages ---------------------------------------------------------------------
    async def stop(self, info: RunInfo, reason: str) -> bool:
        """Ask the owner of ``info`` to stop it (itself included). False if no process
        took the message (the owner is gone), or, for this process's own run, if it had
        already ended."""
        ...

    async def invalidate(self, message: Invalidation) -> None:
        """Every process (this one included) drops what ``message`` names."""
        ...

    # -- runs and their events --------------------------------------------------------
    def open_log(self, info: RunInfo) -> EventLog:
        """Start the event log of a run this process owns (and register it in
        :meth:`lookup`)."""
        ...

    async def lookup(self, run_id: str) -> RunInfo | None:
        """The run, if it is running or ended less than the retention time ago."""
        ...

    async def read(
        self, run_id: str, after: int, wait: float
    ) -> tuple[list[tuple[int, Event]], bool]:
        """The events numbered after ``after`` (waiting up to ``wait`` seconds for the first),
        and whether the log is closed (the run ended and every event is in it)."""
        ...

    async def owner_alive(self, owner: str) -> bool: ...

    async def watch(self, run_id: str, seconds: float) -> None:
        """A client on this process follows ``run_id`` (owned elsewhere) for the next
        ``seconds``; refreshed while it does, so the owner does not cancel the run when its
        own clients have left."""
        ...

    async def watched(self, run_id: str) -> bool:
        """Whether a client on some process follows ``run_id`` (see :meth:`watch`)."""
        ...


# A task group's start_soon: where a backend's background tasks run.
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]
