"""Find and kill real processes for fault tests (reads /proc; no extra dependency)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def pids_with_title(fragment: str) -> list[int]:
    """PIDs whose command line contains fragment (Ray titles actor processes 'ray::Class.method')."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in cmdline:
                found.append(int(entry.name))
    return found


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
