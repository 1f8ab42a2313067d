"""A real load balancer: Debian's nginx, with the configuration the README gives (read from
it, ports changed), in front of two flowserve processes sharing PostgreSQL and Redis.

Streams are not buffered (first frame through nginx within a few ms of direct, frames spaced
as produced); when a process is SIGKILLed, new requests go to the other one; a stream cut by
its client resumes through nginx on whichever process it reaches, every token once; a stream
whose process was killed resumes with a clear "interrupted" end.

nginx runs unprivileged in the foreground (``-g 'daemon off;'``), everything in a temporary
directory; an access log of its own shows which process served each request."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import sse
from tests.cluster_env import missing, pg_url, prefix, shared_redis, wait_until  # noqa: F401
from tests.conftest import ROOT, Server, free_port, start_server, stop_server
from tests.test_resume import COUNTED, WORDS, deltas, read_messages, resume

pytestmark = pytest.mark.slow

SLOW = COUNTED.replace("id: counted", "id: slow").replace("delay=0.03", "delay=0.1")  # 4 s
TOKENS = 10
PACED = f"""
id: paced
inputs: {{in-0: {{default: "{" ".join(f"t{i}" for i in range(TOKENS))}"}}}}
nodes:
  llm-0: {{type: llm, provider: scripted, model: "echo?first_delay=0.3&delay=0.1", prompt: "{{in-0}}"}}
outputs: {{out-0: llm-0}}
"""
SHORT = COUNTED.replace("id: counted", "id: short").replace("delay=0.03", "delay=0")
BEGIN = "<!-- nginx.conf: begin (tests/test_nginx.py reads this block) -->"
END = "<!-- nginx.conf: end -->"
LOG_FORMAT = '$request_method $uri $status "$upstream_addr" "$http_last_event_id"'
LINE = re.compile(r'(\S+) (\S+) (\d+) "([^"]*)" "([^"]*)"')


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block.startswith("```nginx\n") and block.endswith("\n```"), block
    return block.removeprefix("```nginx\n").removesuffix("```")


def configured(snippet: str, listen: int, upstreams: tuple[int, int]) -> str:
    """The README's snippet with this test's ports, each replaced where it is."""
    for old, new in (
        ("listen 80;", f"listen 127.0.0.1:{listen};"),
        ("server 127.0.0.1:8001 ", f"server 127.0.0.1:{upstreams[0]} "),
        ("server 127.0.0.1:8002 ", f"server 127.0.0.1:{upstreams[1]} "),
    ):
        assert snippet.count(old) == 1, old
        snippet = snippet.replace(old, new)
    return snippet


@dataclass
class Entry:
    method: str
    path: str
    status: int
    upstreams: list[str]  # the processes tried, in order (nginx's $upstream_addr)
    last_event_id: str


@dataclass
class Nginx:
    base_url: str
    directory: Path
    process: subprocess.Popen[bytes]

    def entries(self) -> list[Entry]:
        found = []
        for line in (self.directory / "access.log").read_text().splitlines():
            method, path, status, addrs, last_id = LINE.fullmatch(line).groups()  # type: ignore[union-attr]
            tried = [a.strip() for a in addrs.split(",") if a.strip() not in ("", "-")]
            found.append(Entry(method, path, int(status), tried, last_id))
        return found

    def log(self) -> str:
        return (self.directory / "error.log").read_text(errors="replace")


def start_nginx(upstreams: tuple[int, int]) -> Nginx:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(binary, os.X_OK):
        missing("nginx (apt-get install nginx)")
    # Not under pytest's tmp_path: as root, nginx's worker runs as nobody and must reach it.
    directory = Path(tempfile.mkdtemp(prefix="flowserve-nginx-"))
    directory.chmod(0o755)
    port = free_port()
    temp_paths = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (directory / "nginx.conf").write_text(
        f"""
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} notice;
events {{ worker_connections 256; }}
http {{
    log_format upstreams '{LOG_FORMAT}';
    access_log {directory / "access.log"} upstreams;
{temp_paths}
{configured(readme_snippet(), port, upstreams)}
}}
"""
    )
    process = subprocess.Popen(
        [binary, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, (directory / "error.log").read_text(errors="replace")
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=20, what="nginx answering")
    (directory / "access.log").write_text("")  # only the test's own requests from here
    return Nginx(base_url, directory, process)


Cluster = tuple[Nginx, Server, Server]


def run_cluster(
    tmp_path: Path, database_url: str, redis_url: str, redis_prefix: str, **settings: str
) -> Iterator[Cluster]:
    """nginx in front of two servers on one PostgreSQL database and one Redis prefix."""
    env = {
        "FLOWSERVE_REDIS_URL": redis_url,
        "FLOWSERVE_REDIS_PREFIX": redis_prefix,
        "FLOWSERVE_HEARTBEAT_INTERVAL": "0.5",
        "FLOWSERVE_RECORD_DELAY": "0.05",
        "FLOWSERVE_RESUME_GRACE": "3",
        "FLOWSERVE_DRAIN_SECONDS": "1",
        **settings,
    }
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = start_server(tmp_path / "a", env=env, database_url=database_url)
    b = start_server(
        tmp_path / "b", env=env, database_url=database_url, keys=(a.public_key, a.private_key)
    )
    nginx: Nginx | None = None
    try:
        for flow in (COUNTED, SLOW, PACED, SHORT):
            assert a.publish(flow).status_code == 201
        nginx = start_nginx((port(a), port(b)))
        yield nginx, a, b
    finally:
        if nginx is not None:
            nginx.process.send_signal(signal.SIGQUIT)  # graceful stop
            try:
                nginx.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                nginx.process.kill()
                nginx.process.wait()
            shutil.rmtree(nginx.directory, ignore_errors=True)
        stop_server(a)
        stop_server(b)


@pytest.fixture
def cluster(tmp_path, pg_url, shared_redis, prefix) -> Iterator[Cluster]:  # noqa: F811
    yield from run_cluster(tmp_path, pg_url, shared_redis, prefix)


@pytest.fixture
def capped(tmp_path, pg_url, shared_redis, prefix) -> Iterator[Cluster]:  # noqa: F811
    """One run at a time in all (the limit counted in Redis): more are refused with 503."""
    yield from run_cluster(
        tmp_path, pg_url, shared_redis, prefix, FLOWSERVE_MAX_CONCURRENT_RUNS="1"
    )


def port(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def address(server: Server) -> str:
    return server.base_url.removeprefix("http://")


def stream_url(base_url: str, flow: str = "counted") -> str:
    return f"{base_url}/inference/v0/stream/acme/{flow}?sse=true"


def messages_of(response: httpx.Response) -> Iterator[sse.Message]:
    """The SSE messages of a response, each as soon as it is complete."""
    buffer = ""
    for chunk in response.iter_text():
        buffer += chunk
        *complete, buffer = buffer.split("\n\n")
        for block in complete:
            yield from sse.parse(block + "\n\n")


def token_times(base_url: str, server: Server) -> list[float]:
    """Seconds from sending a ``paced`` stream request to each token's frame."""
    times = []
    url = stream_url(base_url, "paced")
    with httpx.Client(timeout=30) as client:
        started = time.perf_counter()
        with client.stream("POST", url, headers=server.auth(), json={}) as response:
            assert response.status_code == 200
            for message in messages_of(response):
                tokens = message.json()["outputs"].get("out-0", "").split()
                times.extend([time.perf_counter() - started] * len(tokens))
    assert len(times) == TOKENS
    return times


def test_streams_through_nginx_are_not_buffered(cluster):
    nginx, a, _ = cluster
    direct, proxied, spacing = [], [], []
    for _ in range(5):
        direct.append(token_times(a.base_url, a)[0])
        through = token_times(nginx.base_url, a)
        proxied.append(through[0])
        spacing.append(statistics.median(y - x for x, y in itertools.pairwise(through)))
    direct_ms, proxied_ms = statistics.median(direct) * 1000, statistics.median(proxied) * 1000
    print(
        f"time to the first token's frame (median of 5, 300 ms first-token delay): "
        f"direct {direct_ms:.1f} ms, through nginx {proxied_ms:.1f} ms "
        f"(+{proxied_ms - direct_ms:.1f} ms)"
    )
    assert proxied_ms - direct_ms < 50
    # Each token's frame came on its own, 100 ms after the previous one, not all at the end.
    assert all(0.07 < gap < 0.2 for gap in spacing), spacing


def test_when_a_process_is_killed_new_requests_go_to_the_other(cluster):
    nginx, a, b = cluster
    seen = set()
    for _ in range(4):  # round robin: both processes serve
        seen.add(httpx.get(f"{nginx.base_url}/healthz", timeout=10).headers["x-flowserve-instance"])
    assert len(seen) == 2
    a.process.kill()
    a.process.wait(timeout=10)
    killed = len(nginx.entries())
    with httpx.Client(timeout=30) as client:
        for i in range(20):
            response = client.post(
                f"{nginx.base_url}/inference/v0/run/acme/short",
                headers=a.auth(),
                json={"in-0": f"request {i}"},
            )
            assert response.status_code == 200, (i, response.text)
            assert response.json()["outputs"]["out-0"] == f"request {i}"
    after = nginx.entries()[killed:]
    assert [e.status for e in after] == [200] * 20
    # The POSTs nginx first sent to the dead process were refused before being sent, so it
    # passed them on (at most max_fails=2 of them; then it skips that process).
    retried = [e for e in after if len(e.upstreams) > 1]
    assert 1 <= len(retried) <= 2, [e.upstreams for e in after]
    assert all(e.upstreams == [address(a), address(b)] for e in retried)
    assert all(e.upstreams == [address(b)] for e in after if e not in retried)


def cut(nginx: Nginx, server: Server, flow: str, count: int) -> list[sse.Message]:
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", stream_url(nginx.base_url, flow), headers=server.auth(), json={}
        ) as r,
    ):
        assert r.status_code == 200
        return read_messages(r, stop_after=count)


def served_by(nginx: Nginx, last_event_id: str = "-") -> str:
    """Which process served the run request with this ``last-event-id`` (nginx logs none as
    '-')."""
    entries = wait_until(
        lambda: [
            e
            for e in nginx.entries()
            if e.method == "POST" and "/stream/" in e.path and e.last_event_id == last_event_id
        ]
    )
    assert len(entries) == 1, entries
    return entries[0].upstreams[-1]


def test_a_stream_cut_resumes_through_nginx_on_either_process_every_token_once(cluster):
    nginx, a, _ = cluster
    outcomes = set()
    for between in (False, True):  # round robin: the resume lands on the other, then the same
        (nginx.directory / "access.log").write_text("")
        first = cut(nginx, a, "counted", count=6)
        if between:
            assert httpx.get(f"{nginx.base_url}/healthz", timeout=10).status_code == 200
        resumed = resume(stream_url(nginx.base_url), a, first[-1].id)
        assert resumed.status_code == 200, resumed.text
        rest = list(sse.parse(resumed.text))
        assert deltas(first) + deltas(rest) == WORDS  # every token once, in order
        final = rest[-1].json()
        assert final["state"] == "COMPLETED" and final["run_id"] == first[-1].id.split(":")[0]
        owner, resumer = served_by(nginx), served_by(nginx, first[-1].id)
        outcomes.add("same process" if owner == resumer else "other process")
    assert outcomes == {"same process", "other process"}


def runs_in_flight(server: Server) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return float(re.search(r"^flowserve_runs_in_flight (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def test_a_stream_whose_process_is_killed_resumes_through_nginx_as_interrupted(cluster):
    nginx, a, b = cluster
    messages: list[sse.Message] = []
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", stream_url(nginx.base_url, "slow"), headers=a.auth(), json={}) as r,
    ):
        assert r.status_code == 200
        received = messages_of(r)
        messages = [next(received) for _ in range(8)]
        owner = wait_until(
            lambda: next((s for s in (a, b) if runs_in_flight(s) == 1), None),
            what="the process running the stream",
        )
        survivor = b if owner is a else a
        owner.process.kill()
        owner.process.wait(timeout=10)
        # what the killed process had sent still arrives; then the stream breaks off
        with contextlib.suppress(httpx.HTTPError):
            messages.extend(received)
    assert messages[-1].json()["state"] == "RUNNING"
    killed = time.monotonic()
    resumed = resume(stream_url(nginx.base_url, "slow"), a, messages[-1].id)
    told = time.monotonic() - killed
    assert resumed.status_code == 200, resumed.text
    rest = list(sse.parse(resumed.text))
    final = rest[-1].json()
    assert final["state"] == "FAILED" and "interrupted" in final["error"], final
    assert final["metadata"]["error_type"] == "interrupted"
    assert told < 3 * 2.0 + 2.0  # the dead process's liveness expires, and a margin
    streamed = deltas(messages) + deltas(rest)
    assert WORDS.startswith(streamed)
    assert served_by(nginx, messages[-1].id) == address(survivor)


def test_processes_at_capacity_stay_in_the_upstream(capped):
    # flowserve's 503 at capacity is a healthy process's answer. nginx does not pass a POST
    # it has sent on, nor count its answer as a failure; with ``non_idempotent`` it would do
    # both, and a burst would mark both processes down: nginx would then answer everything
    # with its own 502 ("no live upstreams") for fail_timeout.
    nginx, a, _ = capped
    url = stream_url(nginx.base_url, "paced")
    with httpx.Client(timeout=30) as client, client.stream("POST", url, headers=a.auth()) as r:
        assert r.status_code == 200
        received = messages_of(r)
        next(received)  # the run holds the one slot until the stream ends
        for _ in range(6):
            refused = httpx.post(
                f"{nginx.base_url}/inference/v0/run/acme/short", headers=a.auth(), json={}
            )
            assert refused.status_code == 503 and "retry-after" in refused.headers
        instances = set()
        for _ in range(4):
            health = httpx.get(f"{nginx.base_url}/healthz", timeout=10)
            assert health.status_code == 200, health.text
            instances.add(health.headers["x-flowserve-instance"])
        assert len(instances) == 2
        assert list(received)[-1].json()["state"] == "COMPLETED"
    for _ in range(4):  # both processes take runs again at once
        response = wait_until(
            lambda: (
                (
                    r := httpx.post(
                        f"{nginx.base_url}/inference/v0/run/acme/short", headers=a.auth(), json={}
                    )
                ).status_code
                != 503
                and r
            ),
            timeout=5,
            what="the slot freed",
        )
        assert response.status_code == 200, response.text
    assert "no live upstreams" not in nginx.log()
