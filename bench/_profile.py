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


def _short(path: str) -> str:
    path = _SITE.sub("", path)
    return re.sub(r".*/src/flowserve/", "flowserve/", path)


def _thread_group(profile_name: str) -> str:
    """'Thread 123 "Thread-26 (_connection_worker_thread)"' -> '_connection_worker_thread'."""
    match = re.search(r'"(.*)"', profile_name)
    label = match.group(1) if match else profile_name
    inner = re.search(r"\((.*)\)", label)
    return inner.group(1) if inner else re.sub(r"[-_ ]?\d+$", "", label)


def top(speedscope: Path, n: int = 25) -> dict[str, Any]:
    """Own-time and inclusive-time shares per function (of the event-loop thread, and of all
    threads), and each thread group's share of the on-CPU samples."""
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]

    def name(i: int) -> str:
        frame = frames[i]
        where = _short(frame.get("file") or "?")
        line = frame.get("line")
        return f"{frame['name']} ({where}{':' + str(line) if line else ''})"

    def tally(profiles: list[dict[str, Any]]) -> dict[str, Any]:
        own: dict[int, int] = {}
        incl: dict[int, int] = {}
        total = 0
        for profile in profiles:
            for stack in profile["samples"]:
                if not stack:
                    continue
                total += 1
                own[stack[-1]] = own.get(stack[-1], 0) + 1
                for frame in set(stack):
                    incl[frame] = incl.get(frame, 0) + 1

        def ranked(table: dict[int, int]) -> list[dict[str, Any]]:
            best = sorted(table.items(), key=lambda kv: -kv[1])[:n]
            return [{"function": name(i), "pct": 100 * w / total} for i, w in best]

        return {"samples": total, "own": ranked(own), "inclusive": ranked(incl)}

    profiles = data["profiles"]
    main = [p for p in profiles if '"MainThread"' in p.get("name", "")]
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
    return {"main": tally(main), "all": tally(profiles), "threads": threads}
