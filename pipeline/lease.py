"""One driver per job: a lease object in the job folder, refreshed while the driver runs.

A second driver on the same job refuses while the lease is fresh. A lease goes stale when its
heartbeat is older than LEASE_SECONDS, or at once when its owner ran on this host and that
process is gone (a killed driver re-run on the same machine resumes without waiting).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from novarch_batch.storage import Storage

LEASE_KEY = "_LEASE"
HEARTBEAT_SECONDS = 5.0
LEASE_SECONDS = 30.0  # six missed heartbeats: a live driver is never taken over by a slow store


class JobBusy(RuntimeError):
    """Another driver holds the job."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(lease: dict, now: float) -> bool:
    if now - float(lease.get("heartbeat", 0)) > LEASE_SECONDS:
        return True
    return lease.get("host") == socket.gethostname() and not _pid_alive(int(lease.get("pid", -1)))


class Lease:
    def __init__(self, job: Storage):
        self.job = job
        self.owner = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        self.job.put_bytes(LEASE_KEY, json.dumps({**self.owner, "heartbeat": time.time()}).encode())

    def _read(self) -> dict | None:
        if not self.job.exists(LEASE_KEY):
            return None
        try:
            return json.loads(self.job.get_bytes(LEASE_KEY))
        except (ValueError, OSError):
            return None

    def acquire(self) -> None:
        current = self._read()
        if current and current.get("id") != self.owner["id"] and not is_stale(current, time.time()):
            raise JobBusy(
                f"{self.job.url} is being run by another driver (pid {current.get('pid')} on {current.get('host')}); "
                f"wait for it (`novarch-batch status {self.job.url}`) or stop it, then re-run"
            )
        self._write()
        # Read back after a short pause: of two drivers racing for a free lease, the last writer wins
        # and the other sees a foreign owner and backs off.
        time.sleep(0.2)
        if (self._read() or {}).get("id") != self.owner["id"]:
            raise JobBusy(f"{self.job.url} was just taken by another driver; wait for it, then re-run")
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._write()
            except Exception:  # a store outage must not kill the driver; the lease just ages
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=HEARTBEAT_SECONDS)
        try:
            if (self._read() or {}).get("id") == self.owner["id"]:
                self.job.delete(LEASE_KEY)
        except Exception:
            pass

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
