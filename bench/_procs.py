"""Child processes for the relay benchmark, and what /proc says about them.

Every child is started through :func:`spawn`: file-descriptor limit raised to the hard limit,
``PR_SET_PDEATHSIG`` so it dies with us even on SIGKILL, its own process group, and an atexit
hook that stops it (SIGTERM, then SIGKILL) by its process-group id. Nothing else is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
_children: list[subprocess.Popen[bytes]] = []


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (5,000 open streams need ~10,000 fds)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_setup() -> None:
    raise_nofile()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    args: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    unset: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    with log.open("wb") as out:
        process = subprocess.Popen(
            args,
            env={**full_env, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            preexec_fn=_child_setup,  # only async-signal-safe calls: setrlimit, prctl
            start_new_session=True,
        )
    _children.append(process)
    return process


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the child's process group, SIGKILL it if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers in its group
    if process in _children:
        _children.remove(process)


@atexit.register
def stop_all() -> None:
    for process in list(_children):
        stop(process, timeout=5)


# -- /proc --------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()  # fields from "state" (field 3) on


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, ()))
    return out


def cpu_seconds(pid: int, with_children: bool = True) -> float:
    """User + system CPU seconds of ``pid`` (and its live descendants)."""
    total = 0.0
    for p in tree(pid) if with_children else [pid]:
        try:
            fields = _stat_fields(p)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


def memory_kib(pid: int, key: str = "VmRSS", with_children: bool = True) -> int:
    """A /proc/<pid>/status memory figure (VmRSS, VmHWM, …) in KiB, summed over the tree."""
    total = 0
    for p in tree(pid) if with_children else [pid]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def git_state(root: Path) -> dict[str, object]:
    """Which flowserve was measured: commit, and how many files under src/ differ from it."""
    import subprocess

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip()

    dirty = [line for line in git("status", "--porcelain", "--", "src").splitlines() if line]
    return {
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "src_dirty_files": len(dirty),
    }


def machine() -> dict[str, object]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has spent busy since boot (all cores, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLK_TCK


def ours_seconds() -> float:
    """CPU-seconds of this process, of its children already reaped (servers stopped, py-spy,
    pip), and of every live child started through :func:`spawn`."""
    mine = sum(os.times()[:4])
    return mine + sum(cpu_seconds(p.pid) for p in _children if p.poll() is None)


class ForeignLoad:
    """CPU used on this machine by processes that are not the benchmark's, between marks."""

    def __init__(self) -> None:
        self.mark()

    def mark(self) -> None:
        self.t, self.busy, self.ours = time.monotonic(), machine_busy_seconds(), ours_seconds()

    def cores(self) -> tuple[float, float]:
        """(foreign CPU-seconds, average foreign cores) since the last mark."""
        dt = max(time.monotonic() - self.t, 1e-9)
        foreign = max(machine_busy_seconds() - self.busy - (ours_seconds() - self.ours), 0.0)
        return foreign, foreign / dt
