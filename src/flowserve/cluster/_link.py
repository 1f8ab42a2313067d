"""The connection to Redis, and whether Redis is reachable, for the parts of
:class:`~flowserve.cluster.redis.RedisCluster`.

redis-py is imported here, when a cluster is made, never at flowserve's import. A command
that fails to connect or times out marks Redis unreachable (logged once per outage, with
where it is and the error's type: never the URL, which may hold a password); from then on
nothing waits on Redis until the cluster's heartbeat gets through again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from flowserve.errors import ConfigError, LimitError

log = logging.getLogger("flowserve.cluster")

Command = tuple[Any, ...]  # one Redis command and its arguments
POOL_SIZE = 256  # connections to Redis per process, at most; more commands wait their turn


class Link:
    def __init__(self, url: str, prefix: str) -> None:
        try:
            from redis import exceptions
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise ConfigError(
                "FLOWSERVE_REDIS_URL is set but redis-py is not installed: "
                "pip install 'flowserve[cluster]'"
            ) from None
        # Connection errors (Redis down or unreachable) and every Redis error.
        self.down_errors = (exceptions.ConnectionError, exceptions.TimeoutError, OSError)
        self.errors = (exceptions.RedisError, OSError)
        self.no_script = exceptions.NoScriptError
        # One retry: the first command on a connection Redis dropped fails, the retry
        # reconnects. Short timeouts: an unreachable Redis is noticed within two seconds.
        # A blocking pool: when every connection is busy (100 streams starting together), a
        # command waits for one instead of failing. redis-py's default pool raises
        # MaxConnectionsError, a ConnectionError, which read as Redis being down: limits
        # went per process and run events were dropped (bench/scaleout.py saw it at c=100).
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=2.0,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            retry=Retry(NoBackoff(), 1),
        )
        self.redis = Redis.from_pool(pool)  # owns it: closing the client closes the pool
        kwargs = self.redis.connection_pool.connection_kwargs
        self.where = str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")
        self.prefix = prefix
        self.reachable = True
        self.outages = 0  # counted, so a listener can tell it must subscribe again

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    def lost(self, exc: BaseException) -> None:
        if self.reachable:
            self.reachable = False
            self.outages += 1
            log.warning(
                "Redis at %s is unreachable (%s): until it is back, each process counts "
                "limits alone, stops and invalidations reach this process only, and run "
                "events are not logged",
                self.where,
                type(exc).__name__,
            )

    def regained(self) -> None:
        if not self.reachable:
            self.reachable = True
            log.warning("Redis at %s is reachable again: limits are shared again", self.where)

    @staticmethod
    def unavailable() -> LimitError:
        return LimitError(
            "the other processes cannot be reached (Redis unreachable)", 1.0, status=503
        )

    async def send(self, commands: list[Command]) -> list[Any]:
        """Every command in one round trip; the replies, a command's error among them, in
        order. Raises if the connection fails."""
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))

    async def call(self, command: Callable[[], Awaitable[Any]]) -> Any:
        """A command's reply; 503 (LimitError) if Redis is, or turns out to be, unreachable."""
        if not self.reachable:
            raise self.unavailable()
        try:
            return await command()
        except self.errors as exc:
            if isinstance(exc, self.down_errors):
                self.lost(exc)
                raise self.unavailable() from None
            raise

    async def aclose(self) -> None:
        await self.redis.aclose()
