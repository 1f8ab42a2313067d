"""The embedded default, one process and no Redis: limits decided without waiting, messages
handled at once, the event codec, caches that drop what an invalidation names, and the
route that revokes a key."""

from __future__ import annotations

import asyncio
import typing
import uuid
from collections.abc import Iterator

import httpx
import pydantic
import pytest

from flowserve.auth import PRIVATE, PUBLIC, Principal
from flowserve.cache import RefreshingCache
from flowserve.cluster._codec import (
    decode_event,
    decode_info,
    decode_invalidation,
    decode_stop,
    encode_event,
    encode_info,
    encode_invalidation,
    encode_stop,
)
from flowserve.cluster.base import Invalidation, RunInfo
from flowserve.cluster.local import LocalCluster
from flowserve.config import Settings
from flowserve.errors import LimitError, NotFoundError
from flowserve.events import (
    Event,
    NodeCompleted,
    NodeDelta,
    NodeResults,
    NodeStarted,
    RunFinished,
)
from flowserve.http.admission import Limits
from tests.conftest import Server, start_server, stop_server
from tests.security import add_key

EVENTS = [
    NodeStarted("llm-0"),
    NodeDelta("llm-0", 'Grüße, "quoted" \n and {braces} 🙂'),
    NodeDelta("tpl-0", ""),
    NodeCompleted("llm-0", "whole text", {"prompt_tokens": 3, "completion_tokens": 5}),
    NodeCompleted("tpl-0", "t", None),
    RunFinished("FAILED", "boom", "provider_upstream_error", "llm-0", {"llm-0": {"x": 1}}),
    RunFinished("COMPLETED"),
    NodeResults("kb-0", [{"source": "a.md", "score": 0.5}], {"searched": 3}),
    NodeResults("kb-0"),
]


def test_events_and_messages_survive_the_codec():
    assert {type(event) for event in EVENTS} == set(typing.get_args(Event))  # every kind
    for event in EVENTS:
        assert decode_event(encode_event(event)) == event
    assert len(encode_event(NodeDelta("llm-0", "hi"))) < 20  # compact: one per token
    info = RunInfo("r" * 32, "o" * 32, "acme", "echo", 7, None, "user-1", {"in-0": "é"})
    assert decode_info(encode_info(info)) == info
    assert decode_stop(encode_stop("r1", "run stopped")) == ("r1", "run stopped")
    for message in (Invalidation(key_id="k"), Invalidation("k", "o", "f"), Invalidation()):
        assert decode_invalidation(encode_invalidation(message)) == message
    with pytest.raises(TypeError):
        encode_event("not an event")  # type: ignore[arg-type]


def principal(key_id: str = "k1", rate: int | None = None) -> Principal:
    return Principal(org_id="acme", key_id=key_id, kind=PUBLIC, rate_limit_per_minute=rate)


def done_at_once(coroutine):
    """The value of a coroutine that must not suspend (the embedded default's fast path)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise AssertionError("it waited")


def test_local_limits_are_decided_without_waiting():
    settings = Settings(max_concurrent_runs_per_key=2, max_concurrent_runs=3)
    limits = Limits(settings, LocalCluster("me"))
    assert limits.check_rate(principal(rate=2)) is None  # counted here, nothing to await
    assert limits.check_rate(principal(rate=2)) is None
    with pytest.raises(LimitError) as refused:
        limits.check_rate(principal(rate=2))
    assert refused.value.status == 429 and 29 < refused.value.retry_after <= 30
    a = done_at_once(limits.admit(principal("k2")))
    b = done_at_once(limits.admit(principal("k2")))
    with pytest.raises(LimitError, match=r"too many runs in flight for this API key \(limit 2\)"):
        done_at_once(limits.admit(principal("k2")))
    c = done_at_once(limits.admit(principal("k3")))
    with pytest.raises(LimitError, match=r"server busy") as busy:
        done_at_once(limits.admit(principal("k4")))
    assert busy.value.status == 503 and busy.value.retry_after == 1.0
    a.release()
    a.release()  # once only
    d = done_at_once(limits.admit(principal("k4")))
    for slot in (b, c, d):
        slot.release()
    assert limits.cluster.limits.total == 0  # type: ignore[attr-defined]
    # a run request refused before its slot counts against the rate all the same
    done_at_once(limits.count_request(principal("k5", rate=1)))
    with pytest.raises(LimitError, match="rate limit exceeded: 1 requests per minute"):
        done_at_once(limits.admit(principal("k5", rate=1)))


def test_local_messages_go_straight_to_the_handlers():
    cluster = LocalCluster("me")
    stopped: list[tuple[str, str]] = []
    dropped: list[Invalidation] = []

    async def go() -> None:
        await cluster.start(lambda r, why: stopped.append((r, why)) or True, dropped.append, None)
        info = RunInfo("r1", "me", "acme", "echo", 1, None, None, {})
        assert await cluster.stop(info, "run stopped")
        await cluster.invalidate(Invalidation(key_id="k1"))
        assert await cluster.lookup("r1") is None  # runs are found in the RunService
        with pytest.raises(NotFoundError):
            await cluster.read("r1", 0, 1.0)
        assert await cluster.owner_alive("me") and not await cluster.owner_alive("other")
        assert not await cluster.watched("r1")
        cluster.open_log(info).append([NodeStarted("x")])  # kept nowhere: a no-op

    asyncio.run(go())
    assert stopped == [("r1", "run stopped")] and dropped == [Invalidation(key_id="k1")]
    assert cluster.status() == {"backend": "local", "state": "ok"} and not cluster.shared


def test_a_cache_drops_what_an_invalidation_names_and_keeps_no_stale_load():
    async def go() -> None:
        cache: RefreshingCache[str, Principal] = RefreshingCache(ttl=60)

        async def load(key_id: str) -> Principal:
            return principal(key_id)

        for name in ("a", "b", "c"):
            await cache.get(f"hash-{name}", lambda n=name: load(n))
        cache.drop_where(lambda p: p.key_id == "b")
        loads = []

        async def counted(key_id: str) -> Principal:
            loads.append(key_id)
            return principal(key_id)

        for name in ("a", "b", "c"):
            await cache.get(f"hash-{name}", lambda n=name: counted(n))
        assert loads == ["b"]  # only the dropped one was loaded again
        cache.clear()
        await cache.get("hash-a", lambda: counted("a"))
        assert loads == ["b", "a"]

        # An invalidation arriving while a load is under way: that load's (maybe old)
        # value is returned to its reader but not kept.
        gate = asyncio.Event()

        async def slow() -> Principal:
            await gate.wait()
            return principal("old")

        reader = asyncio.create_task(cache.get("hash-x", slow))
        await asyncio.sleep(0)
        cache.invalidate("hash-x")
        gate.set()
        assert (await reader).key_id == "old"
        assert (await cache.get("hash-x", lambda: load("new"))).key_id == "new"

    asyncio.run(go())


def test_redis_settings_are_checked():
    assert Settings().redis_url is None  # the embedded default shares nothing
    for bad in ({"redis_prefix": "has space"}, {"redis_prefix": ""}, {"event_retention": 0}):
        with pytest.raises(pydantic.ValidationError):
            Settings(**bad)


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"FLOWSERVE_KEY_CACHE_TTL": "60", "FLOWSERVE_WARM_UP": "false"}
    server = start_server(tmp_path_factory.mktemp("alone"), env=env)
    try:
        server.publish_file("echo.yaml")
        yield server
    finally:
        stop_server(server)


@pytest.mark.slow
def test_revoking_a_key_through_the_api(alone: Server):
    key = add_key(alone.database_url, alone.org, PUBLIC)
    key_id = key.split("-")[2]
    run = f"{alone.base_url}/run_deployed_flow?flow_id=echo&org={alone.org}"
    assert httpx.post(run, headers=alone.auth(key), json={"in-0": "hi"}).status_code == 200
    url = f"{alone.base_url}/v1/orgs/{alone.org}/keys/{key_id}"
    assert httpx.delete(url, timeout=10).status_code == 401
    r = httpx.delete(url, headers=alone.auth(), timeout=10)
    assert r.status_code == 403
    assert r.json() == {"detail": "a private API key is needed to revoke API keys"}
    r = httpx.delete(url, headers=alone.auth(alone.private_key), timeout=10)
    assert r.status_code == 200 and r.json() == {"key_id": key_id, "revoked": True}
    # refused at once, though its cache would have kept it a minute
    r = httpx.post(run, headers=alone.auth(key), json={"in-0": "hi"}, timeout=10)
    assert r.status_code == 401 and r.json() == {"detail": "invalid API key"}
    assert httpx.delete(url, headers=alone.auth(alone.private_key)).status_code == 200  # again
    other_org = f"other-{uuid.uuid4().hex[:6]}"
    other = add_key(alone.database_url, other_org, PRIVATE)
    elsewhere = f"{alone.base_url}/v1/orgs/{alone.org}/keys/{other.split('-')[2]}"
    r = httpx.delete(elsewhere, headers=alone.auth(alone.private_key), timeout=10)
    assert r.status_code == 404  # another org's key: as an unknown one, and left alone
    listed = f"{alone.base_url}/v1/orgs/{other_org}/flows"
    assert httpx.get(listed, headers=alone.auth(other), timeout=10).status_code == 200
    too_long = f"{alone.base_url}/v1/orgs/{alone.org}/keys/{'k' * 65}"
    r = httpx.delete(too_long, headers=alone.auth(alone.private_key), timeout=10)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "key_id"]


@pytest.mark.slow
def test_the_embedded_default_reports_no_cluster(alone: Server):
    assert httpx.get(f"{alone.base_url}/healthz", timeout=5).json() == {"status": "ok"}
    text = httpx.get(f"{alone.base_url}/metrics", timeout=5).text
    assert "flowserve_event_log_write_failures_total 0.0" in text
