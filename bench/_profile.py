"""py-spy on the flowserve process under load, and the top functions by own time.

``py-spy record --format speedscope --function --nonblocking``: samples every thread at
``rate`` Hz without pausing the process; idle samples (the loop waiting in epoll) are left out
by py-spy, so the shares below are shares of the time the process was on CPU. The event-loop
thread (``MainThread``) is reported on its own: that is the relay's hot path; other threads
(aiosqlite's one-per-connection workers) are summarised by group.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from _procs import spawn


def py_spy() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else None


def start(pid: int, seconds: float, out: Path, fmt: str, log: Path, rate: int = 200) -> Any:
    exe = py_spy()
    if exe is None:
        return None
    args = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate)]
    args += ["--nonblocking", "--function", "--format", fmt, "--output", str(out)]
    return spawn(args, log)


def finish(process: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    if process is None:
        return False
    try:
        return process.wait(timeout=timeout) == 0
    except subprocess.TimeoutExpired:
        process.kill()
        return False


_SITE = re.compile(r".*/(site-packages|lib/python3\.\d+)/")
# Frames every sample of the event loop passes through on its way to the loop.
_BOOTSTRAP = re.compile(
    r"^(<frozen runpy>|typer/|click/|flowserve/__main__|flowserve/cli/|uvicorn/main\.py"
    r"|uvicorn/server\.py|uvicorn/_compat\.py|asyncio/runners\.py|asyncio/base_events\.py)"
)
NATIVE = "(native, below the event loop: uvloop I/O, httptools, C extensions)"


def _short(path: str) -> str:
    path = _SITE.sub("", path)
    return re.sub(r".*/src/flowserve/", "flowserve/", path)


def _package(path: str) -> str:
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1].split("/", 1)[0]
    if "/src/flowserve/" in path:
        return "flowserve"
    match = re.search(r"/lib/python3\.\d+/([^/]+)", path)
    if match:
        return "stdlib " + match.group(1).removesuffix(".py")
    return path.strip("<>").split(" ")[0] or "?"


def _thread_group(profile_name: str) -> str:
    """'Thread 123 "Thread-26 (_connection_worker_thread)"' -> '_connection_worker_thread'."""
    match = re.search(r'"(.*)"', profile_name)
    label = match.group(1) if match else profile_name
    inner = re.search(r"\((.*)\)", label)
    return inner.group(1) if inner else re.sub(r"[-_ ]?\d+$", "", label)


def top(speedscope: Path, n: int = 25) -> dict[str, Any]:
    """What the event loop spends its CPU on, and what the other threads do.

    For the event-loop thread: own time by package; own time per function, with its most
    frequent caller and the innermost flowserve frame above it (where to act); inclusive
    time of flowserve's own functions. A sample whose innermost Python frame is the loop's
    ``Runner.run`` was in native code under the loop (``NATIVE``)."""
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]
    short = [_short(f.get("file") or "?") for f in frames]

    def name(i: int) -> str:
        if i < 0:
            return "-"
        frame = frames[i]
        line = frame.get("line")
        return f"{frame['name']} ({short[i]}{':' + str(line) if line else ''})"

    def is_native_marker(i: int) -> bool:
        return short[i].startswith("asyncio/runners.py")

    profiles = data["profiles"]
    main = [p for p in profiles if '"MainThread"' in p.get("name", "")]
    samples = [stack for p in main for stack in p["samples"] if stack]
    total = len(samples) or 1
    own: dict[int, int] = {}
    callers: dict[int, dict[int, int]] = {}
    ours: dict[int, dict[int, int]] = {}
    packages: dict[str, int] = {}
    incl_fs: dict[int, int] = {}
    for stack in samples:
        leaf = stack[-1]
        own[leaf] = own.get(leaf, 0) + 1
        caller = stack[-2] if len(stack) > 1 else -1
        callers.setdefault(leaf, {})[caller] = callers.get(leaf, {}).get(caller, 0) + 1
        mine = next(
            (
                i
                for i in reversed(stack)
                if short[i].startswith("flowserve/") and not _BOOTSTRAP.match(short[i])
            ),
            -1,
        )
        ours.setdefault(leaf, {})[mine] = ours.get(leaf, {}).get(mine, 0) + 1
        package = NATIVE if is_native_marker(leaf) else _package(frames[leaf].get("file") or "?")
        packages[package] = packages.get(package, 0) + 1
        for i in set(stack):
            if short[i].startswith("flowserve/") and not _BOOTSTRAP.match(short[i]):
                incl_fs[i] = incl_fs.get(i, 0) + 1

    def most(counts: dict[int, int]) -> int:
        return max(counts.items(), key=lambda kv: kv[1])[0]

    own_rows = [
        {
            "function": NATIVE if is_native_marker(i) else name(i),
            "pct": 100 * w / total,
            "caller": name(most(callers[i])),
            "flowserve_frame": name(most(ours[i])),
        }
        for i, w in sorted(own.items(), key=lambda kv: -kv[1])[:n]
    ]
    by_package = [
        {"package": k, "pct": 100 * v / total}
        for k, v in sorted(packages.items(), key=lambda kv: -kv[1])
    ]
    flowserve_incl = [
        {"function": name(i), "pct": 100 * w / total}
        for i, w in sorted(incl_fs.items(), key=lambda kv: -kv[1])[:n]
    ]

    groups: dict[str, dict[str, int]] = {}
    for profile in profiles:
        group = groups.setdefault(_thread_group(profile.get("name", "?")), {"threads": 0, "n": 0})
        group["threads"] += 1
        group["n"] += len(profile["samples"])
    every = sum(g["n"] for g in groups.values()) or 1
    threads = [
        {"group": k, "threads": g["threads"], "samples": g["n"], "pct": 100 * g["n"] / every}
        for k, g in sorted(groups.items(), key=lambda kv: -kv[1]["n"])
    ]
    return {
        "main_samples": len(samples),
        "all_samples": every,
        "threads": threads,
        "by_package": by_package,
        "own": own_rows,
        "flowserve_inclusive": flowserve_incl,
    }
