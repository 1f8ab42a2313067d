"""The key and flow caches: one load for concurrent misses, refreshed ahead of expiry in the
background, and never serving a value past its ttl."""

from __future__ import annotations

import anyio
import pytest

from flowserve.cache import RefreshingCache
from flowserve.errors import AuthError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Source:
    """A slow backing store that counts its loads."""

    def __init__(self, value: str = "v1", delay: float = 0.02) -> None:
        self.value, self.delay, self.loads = value, delay, 0
        self.error: Exception | None = None

    async def load(self) -> str:
        self.loads += 1
        await anyio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.value


async def test_concurrent_misses_share_one_load() -> None:
    cache: RefreshingCache[str, str] = RefreshingCache(ttl=10)
    source = Source()
    results: list[str] = []

    async def read() -> None:
        results.append(await cache.get("k", source.load))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(read)
    assert results == ["v1"] * 10 and source.loads == 1
    assert await cache.get("k", source.load) == "v1" and source.loads == 1


async def test_past_half_its_ttl_a_read_is_served_at_once_and_refreshed_behind() -> None:
    cache: RefreshingCache[str, str] = RefreshingCache(ttl=1.0)
    source = Source()
    async with anyio.create_task_group() as tg:
        cache.spawn = tg.start_soon
        assert await cache.get("k", source.load) == "v1"
        source.value = "v2"
        await anyio.sleep(0.6)  # past half the ttl
        with anyio.fail_after(0.01):  # no waiting for the (20 ms) load
            assert await cache.get("k", source.load) == "v1"
        await anyio.sleep(0.15)  # the background refresh is done
        assert await cache.get("k", source.load) == "v2"
        assert source.loads == 2


async def test_past_its_ttl_a_read_waits_for_a_fresh_value() -> None:
    cache: RefreshingCache[str, str] = RefreshingCache(ttl=0.05)
    source = Source()
    assert await cache.get("k", source.load) == "v1"
    source.value = "v2"
    await anyio.sleep(0.06)
    assert await cache.get("k", source.load) == "v2"  # no spawn: nothing refreshed ahead


async def test_errors_reach_every_waiter_and_are_not_cached() -> None:
    cache: RefreshingCache[str, str] = RefreshingCache(ttl=10)
    source = Source()
    source.error = AuthError("invalid API key")
    errors: list[Exception] = []

    async def read() -> None:
        try:
            await cache.get("k", source.load)
        except AuthError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(read)
    assert len(errors) == 5 and source.loads == 1
    source.error = None
    assert await cache.get("k", source.load) == "v1" and source.loads == 2


async def test_a_refresh_that_is_refused_forgets_the_entry() -> None:
    """A key revoked since it was cached: the refresh fails, the next read fails too."""
    cache: RefreshingCache[str, str] = RefreshingCache(ttl=1.0)
    source = Source()
    async with anyio.create_task_group() as tg:
        cache.spawn = tg.start_soon
        await cache.get("k", source.load)
        source.error = AuthError("invalid API key")
        await anyio.sleep(0.6)
        await cache.get("k", source.load)  # served, and starts the refresh
        await anyio.sleep(0.15)
        with pytest.raises(AuthError):
            await cache.get("k", source.load)


async def test_a_waiter_loads_for_itself_when_the_loading_reader_is_cancelled() -> None:
    cache: RefreshingCache[str, str] = RefreshingCache(ttl=10)
    source = Source(delay=0.05)
    got: list[str] = []

    async def loader(scope: anyio.CancelScope) -> None:
        with scope:
            await cache.get("k", source.load)
            got.append("loader finished")  # never: it is cancelled mid-load

    async def waiter() -> None:
        got.append(await cache.get("k", source.load))

    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()
        tg.start_soon(loader, scope)
        await anyio.sleep(0.01)  # the loader is loading
        tg.start_soon(waiter)
        await anyio.sleep(0.01)  # the waiter waits for the loader's load
        scope.cancel()
    assert got == ["v1"] and source.loads == 2


async def test_a_full_cache_drops_one_entry_for_a_new_one_not_all_of_them() -> None:
    cache: RefreshingCache[str, str] = RefreshingCache(ttl=10, max_entries=10)
    sources = {f"k{i}": Source(f"v{i}", delay=0) for i in range(10)}
    for key, source in sources.items():
        await cache.get(key, source.load)
    new = Source("new", delay=0)

    assert await cache.get("new", new.load) == "new"  # one over capacity

    for key in reversed(sources):  # newest first: a read moves an entry to the front
        assert await cache.get(key, sources[key].load) == sources[key].value
    reloaded = [key for key, source in sources.items() if source.loads > 1]
    assert reloaded == ["k0"]  # the other nine were still served from the cache
    assert new.loads == 1


async def test_a_full_cache_keeps_what_was_read_recently() -> None:
    cache: RefreshingCache[str, str] = RefreshingCache(ttl=10, max_entries=3)
    sources = {key: Source(key, delay=0) for key in "abcd"}
    for key in "abc":
        await cache.get(key, sources[key].load)
    await cache.get("a", sources["a"].load)  # the oldest entry, read again: now "b" is

    await cache.get("d", sources["d"].load)

    for key in "acd":
        assert await cache.get(key, sources[key].load) == key
    assert {key: source.loads for key, source in sources.items()} == {
        "a": 1,
        "b": 1,
        "c": 1,
        "d": 1,
    }
    assert await cache.get("b", sources["b"].load) == "b" and sources["b"].loads == 2
