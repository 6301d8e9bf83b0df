"""Find and kill real processes for fault tests (reads /proc; no extra dependency)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


def processes() -> list[tuple[int, str]]:
    """(pid, command line) of every process now, arguments joined by spaces."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
            except OSError:
                continue
    return found


def pids_with_title(fragment: str) -> list[int]:
    """PIDs started by this process (a test's own Ray: its raylet's workers) whose command line contains
    fragment (Ray titles actor processes 'ray::Class.method'). Never another test process's: the suite
    runs two at once, each with its own Ray."""
    return [pid for pid, cmdline in processes() if fragment in cmdline and descends_from(pid, os.getpid())]


def descends_from(pid: int, ancestor: int) -> bool:
    while pid not in (ancestor, None, 0, 1):
        pid = parent_pid(pid)
    return pid == ancestor


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def kill_ray_cluster(head: subprocess.Popen, temp_dir: str) -> None:
    """SIGKILL a test's `ray start --block` (started in its own session) and all it started: its process
    group, every process whose command line names its temp dir (the raylets of the nodes an autoscaler
    added) and their children (workers, titled ray::...). A throwaway cluster needs no orderly stop,
    and Ray's takes 5 s or more; then its temp dir goes."""
    running = processes()
    named = [pid for pid, cmdline in running if temp_dir in cmdline and pid != os.getpid()]
    children = [pid for pid, _ in running if parent_pid(pid) in named]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    for pid in named + children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    head.wait(timeout=10)
    shutil.rmtree(temp_dir, ignore_errors=True)
