"""Resuming a stream (contract 2.5): a request carrying ``last-event-id: <run_id>:<n>``
re-attaches to that run and receives what came after its ``n``-th event, instead of
starting a new run and paying for it twice.

``@microsoft/fetch-event-source`` re-POSTs the same request after a dropped connection, with
the last ``id:`` it saw in that header; the body it sends again is not read. The run is found
in this process (running, or ended less than ``resume_retention`` ago) or, with Redis, in the
cluster, whichever process owns it. What comes after ``n`` is encoded by the route's own
encoder as one batch: on a cumulative stream (the legacy route's default) the first message
is the whole snapshot, on a delta stream exactly the missing deltas, and then the stream goes
on live. Each event reaches the client once. A run of another org or flow, or started by
another public key, is the same 404 as an unknown one: its events are never shown.

A client following a run another process owns learns from the cluster when that process
dies (it stops refreshing its liveness): the stream then ends with an ``interrupted`` error.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

from starlette.responses import Response

from flowserve.cluster.base import Cluster, RunInfo
from flowserve.errors import InputError, NotFoundError
from flowserve.events import Event, RunFinished
from flowserve.http.frames import Encoder, EnvelopeEncoder, LegacyEncoder
from flowserve.http.routing import Call
from flowserve.http.stream import RunStreamResponse
from flowserve.runs.run import FINAL, Run

_POINT = re.compile(r"([0-9a-f]{32}):([0-9]{1,10})")
INTERRUPTED = "run interrupted: the process running it stopped"


def resume_point(call: Call) -> tuple[str, int] | None:
    """The ``last-event-id`` of the request, parsed and checked; None without one."""
    raw = call.request.headers.get("last-event-id")
    if raw is None:
        return None
    matched = _POINT.fullmatch(raw.strip())
    if matched is None:
        raise InputError(
            "last-event-id must be an id this server sent: '<run_id>:<event number>'",
            ("header", "last-event-id"),
        )
    return matched.group(1), int(matched.group(2))


def _gone(run_id: str) -> NotFoundError:
    return NotFoundError(f"run {run_id!r} cannot be resumed: it is unknown, or ended too long ago")


async def resume(
    call: Call, point: tuple[str, int], *, legacy: bool, delta: bool, sse: bool
) -> Response:
    services, caller, args = call.http.services, call.admitted, call.args
    run_id, after = point
    principal = caller.principal

    def check(org_id: str, flow_id: str, key_id: str | None) -> None:
        if (
            org_id != args["org"]
            or flow_id != args["flow_id"]
            or not (principal.is_private or principal.key_id == key_id)
        ):
            raise _gone(run_id)

    source: AsyncIterator[tuple[int, list[Event]]]
    run = services.runs.find(run_id)
    if run is not None:  # this process's
        check(run.loaded.org_id, run.flow.id, run.key_id)
        if after > len(run.log):
            raise InputError(
                f"last-event-id {run_id}:{after} is past the run's {len(run.log)} events",
                ("header", "last-event-id"),
            )
        source = run.log.follow(after)
    else:  # another process's, if they share Redis
        cluster = services.runs.cluster
        info = await cluster.lookup(run_id) if cluster is not None and cluster.shared else None
        if cluster is None or info is None:
            raise _gone(run_id)
        check(info.org_id, info.flow_id, info.key_id)
        loaded = await services.flows.get(info.org_id, info.flow_id, info.flow_version)
        run = services.runs.replica(info, loaded)
        source = follow_remote(cluster, info, run, after, services.settings.heartbeat_interval)
    encoder = (LegacyEncoder if legacy else EnvelopeEncoder)(run, delta=delta, sse=sse)
    encoder.position = after
    return FollowResponse(
        run,
        encoder,
        source,
        local=not run.is_replica,
        sse=sse,
        keepalive_interval=services.settings.keepalive_interval,
        grace=services.settings.resume_grace,
        extra_headers=caller.headers,
    )


async def follow_remote(
    cluster: Cluster, info: RunInfo, replica: Run, after: int, interval: float
) -> AsyncIterator[tuple[int, list[Event]]]:
    """The events of a run another process owns, after the first ``after``, from the
    cluster's log; ``replica`` is brought up to date with every event (the encoders read
    the outputs so far from it). Ends with the run's final event, or an ``interrupted`` one
    when its owner dies."""
    position = 0
    watched_until = 0.0
    while True:
        now = time.monotonic()
        if now >= watched_until:  # its owner keeps it for us: renewed once an interval
            await cluster.watch(info.run_id, 3 * interval)
            watched_until = now + interval
        events, closed = await cluster.read(info.run_id, position, wait=interval / 2)
        if events:
            new: list[Event] = []
            for seq, event in events:
                replica.replay(event)
                if seq > after:
                    new.append(event)
            position = events[-1][0]
            if new:
                yield position, new
            if replica.state in FINAL:
                return
            continue
        if closed:
            if position < after:
                raise InputError(
                    f"last-event-id {info.run_id}:{after} is past the run's {position} events",
                    ("header", "last-event-id"),
                )
            return
        # (A client may be a little ahead of the log: its owner writes each loop turn's
        # events to Redis just after it sends them. If the owner died in that moment, the
        # log stays behind, and the client is told the run was interrupted.)
        if not await cluster.owner_alive(info.owner):
            final = RunFinished("FAILED", INTERRUPTED, "interrupted", usage=dict(replica.usage))
            replica.replay(final)
            yield position, [final]
            return


class FollowResponse(RunStreamResponse):
    """A stream that follows a run it did not start: from its event log, not its session.
    Its client leaving ends only this stream (and lets the run's grace begin)."""

    _attached_run = False

    def __init__(
        self,
        run: Run,
        encoder: Encoder,
        source: AsyncIterator[tuple[int, list[Event]]],
        *,
        local: bool,
        sse: bool,
        keepalive_interval: float,
        grace: float,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(
            run, encoder, sse, keepalive_interval, extra_headers=extra_headers, grace=grace
        )
        self.source = source
        self.local = local

    async def _relay(self) -> None:
        run, encoder = self.run, self.encoder
        if self.local:
            run.attach()
            self._attached = True
        try:
            self._watch_soon()
            await self._start_response()
            async for position, batch in self.source:
                encoder.position = position
                data = encoder.batch(batch)
                if data:
                    await self._write(data)
                if encoder.finished:
                    return
        finally:
            if self._attached:
                self._attached = False
                run.detach(self.grace)
