"""The ``_http1`` client over ``https``, against a local TLS server whose certificate a CA
made for the test signed: a pool given an SSL context that trusts the CA streams from it;
one that does not trust it refuses to connect, before sending anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.fakes.raw_http1 import (
    CHUNKED_HEAD,
    LAST_CHUNK,
    LocalCA,
    RawConnection,
    RawServer,
    chunk,
    make_ca,
)
from tests.providers._support import body_of

from flowserve.providers._http1 import ConnectFailed, Pool, Target

pytestmark = pytest.mark.anyio

# Events of many sizes (some over a TLS record's 16 KiB), with multi-byte characters: about
# 2.5 MB, so the body also crosses the client's pause-reading mark.
EVENTS = [
    b'data: {"n": %d, "text": "%s"}\n\n' % (n, ("h\u00e9llo \U0001f389 " * (n % 700)).encode())
    for n in range(1500)
]


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return make_ca(tmp_path / "ca")


async def stream_events(conn: RawConnection) -> None:
    while await conn.read_request() is not None:
        await conn.send(CHUNKED_HEAD)
        for event in EVENTS:
            await conn.send(chunk(event))
        await conn.send(LAST_CHUNK)


async def test_a_stream_over_tls_arrives_intact(ca: LocalCA) -> None:
    with RawServer(stream_events, tls=ca.server) as server:
        pool = Pool(5.0, tls=ca.client)
        target = Target(server.url, {"Authorization": "Bearer sk-1"})
        try:
            for n in range(2):
                answer = await pool.post(target, b"", b'{"n": %d}' % n)
                assert (answer.status, answer.headers["transfer-encoding"]) == (200, "chunked")
                assert await body_of(answer) == b"".join(EVENTS)
        finally:
            await pool.aclose()
        assert [(r.connection, r.body) for r in server.requests] == [
            (0, b'{"n": 0}'),
            (0, b'{"n": 1}'),  # on the kept-alive TLS connection
        ]
        assert b"\r\nAuthorization: Bearer sk-1\r\n" in server.requests[0].head


@pytest.mark.parametrize("client", ["system-store", "another-ca", "wrong-name"])
async def test_a_server_the_client_does_not_trust_is_refused(
    ca: LocalCA, tmp_path: Path, client: str
) -> None:
    server_tls, client_tls = ca.server, None  # the system's CA store
    if client == "another-ca":
        client_tls = make_ca(tmp_path / "other").client
    elif client == "wrong-name":  # a CA the client trusts, a certificate for another name
        named = make_ca(tmp_path / "named", hostname="upstream.example")
        server_tls, client_tls = named.server, named.client
    with RawServer(stream_events, tls=server_tls) as server:
        pool = Pool(5.0, tls=client_tls)
        try:
            with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await pool.post(Target(server.url, {}), b"", b"{}")
        finally:
            await pool.aclose()
        assert server.requests == []
