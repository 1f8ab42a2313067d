"""``flowserve serve --workers N``: N server processes on one port, under a small supervisor.

The supervisor (the process ``serve`` was started as) binds the port once and starts N
worker processes (``multiprocessing``'s *spawn*: fresh interpreters, nothing inherited but
the listening socket and the settings). Each worker is a whole server, as ``flowserve
serve`` without ``--workers`` is: its own app, database pool, instance id and heartbeat
(``flowserve.store.instances``), the header timeout and the graceful drain of
:class:`~flowserve.http.server.DrainingServer`. They all accept on the one socket; the
kernel gives each new connection to one of them. What they must share (limits, stops, a
stream resumed on another worker than its run's) goes through Redis, so ``serve`` refuses N >
1 without ``redis_url``.

Why not uvicorn's ``workers=``: its worker processes run a plain ``uvicorn.Server``, so the
drain and the header timeout would be lost, and its settings would have to travel through
the environment. Here the settings the command built (environment, config file and options)
are handed to each worker as they are.

Signals: the first SIGTERM or SIGINT is passed on to every worker as SIGTERM, so each drains
(new runs refused with 503, runs in flight given ``drain_seconds``, then stopped with a last
message); the supervisor exits when they all have. A later SIGINT (a second Ctrl+C) is
passed on as SIGINT: the workers skip what is left of their drain. A worker that dies while
serving (killed, out of memory) is logged and replaced; its runs are failed as interrupted
by the survivors' sweeps. A worker that fails to start stops them all: the supervisor exits
3, as ``serve`` does when its app cannot start, since a new one would fail the same way. A
worker whose supervisor disappears (SIGKILL) drains and exits by itself. Hung workers are
not detected (no health pings): use the load balancer's health check on ``/healthz``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from types import FrameType

from flowserve.config import Settings
from flowserve.errors import ConfigError

log = logging.getLogger("flowserve.http")

STARTUP_FAILURE = 3  # the exit code of a server whose app could not start
_spawn = multiprocessing.get_context("spawn")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket the workers share (they call ``listen`` when they start)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _watch_parent(parent: int) -> None:
    """A worker whose supervisor is gone (its parent changed) drains and exits."""
    while os.getppid() == parent:
        threading.Event().wait(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker(settings: Settings, sock: socket.socket, ready: Event, parent: int) -> None:
    """A worker process's main: one whole server on the shared socket."""
    from flowserve.http.server import serve
    from flowserve.logs import configure_logging

    configure_logging(settings)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if not serve(settings, [sock], on_started=ready.set):
        raise SystemExit(STARTUP_FAILURE)


@dataclass
class _Worker:
    number: int
    process: SpawnProcess
    ready: Event


class Supervisor:
    """Starts ``count`` workers on ``settings.host``/``port`` and watches them."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.workers: list[_Worker] = []
        self.stopping = False
        self.failed = False
        self._sock: socket.socket | None = None

    def _start(self, number: int) -> _Worker:
        assert self._sock is not None
        ready = _spawn.Event()
        process = _spawn.Process(
            target=_worker,
            args=(self.settings, self._sock, ready, os.getpid()),
            name=f"flowserve-worker-{number}",
        )
        process.start()
        log.info("worker %d started (pid %s)", number, process.pid)
        return _Worker(number, process, ready)

    def _signal(self, sig: int, frame: FrameType | None) -> None:
        if not self.stopping:
            self.stopping = True
            log.info("%s: stopping %d worker(s)", signal.Signals(sig).name, len(self.workers))
            self._send(signal.SIGTERM)
        elif sig == signal.SIGINT:
            self._send(signal.SIGINT)  # a second Ctrl+C: the workers skip the drain's rest

    def _send(self, sig: int) -> None:
        for worker in self.workers:
            if worker.process.pid is not None and worker.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):  # it has just exited
                    os.kill(worker.process.pid, sig)

    def run(self) -> int:
        """Serve until signalled; the exit code (0, or 3 when a worker failed to start)."""
        self._sock = bind(self.settings.host, self.settings.port)
        previous = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info(
                "serving on %s:%d with %d workers (supervisor pid %d)",
                self.settings.host,
                self.settings.port,
                self.count,
                os.getpid(),
            )
            self.workers = [self._start(n) for n in range(1, self.count + 1)]
            while self.workers:
                wait([w.process.sentinel for w in self.workers], timeout=1.0)
                for worker in [w for w in self.workers if w.process.exitcode is not None]:
                    self.workers.remove(worker)
                    self._ended(worker)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._sock.close()
        return STARTUP_FAILURE if self.failed else 0

    def _ended(self, worker: _Worker) -> None:
        worker.process.join()
        code = worker.process.exitcode
        if self.stopping:
            log.info("worker %d (pid %s) stopped", worker.number, worker.process.pid)
        elif not worker.ready.is_set():
            log.error(
                "worker %d (pid %s) failed to start (exit code %s): stopping",
                worker.number,
                worker.process.pid,
                code,
            )
            self.failed = True
            self._signal(signal.SIGTERM, None)
        else:
            log.warning(
                "worker %d (pid %s) died (exit code %s): starting another",
                worker.number,
                worker.process.pid,
                code,
            )
            self.workers.append(self._start(worker.number))
