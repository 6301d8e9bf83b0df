"""One driver per job: a lease object in the job folder, renewed while the driver runs.

A second driver on the same job refuses while the lease is fresh. The same lease under another
key in the output root makes jobs that share `--exclusive NAME` run one at a time (a schedule's
nights: one still running refuses the next). A lease goes stale when its
heartbeat is older than LEASE_SECONDS, or at once when its owner ran on this host (and in this
PID namespace) and that process is gone (a killed driver re-run on the same machine resumes
without waiting).

Its owner fences itself by the same clock: a driver whose renewals have not landed for
fence_seconds() starts no more work (`fresh`), and once LEASE_SECONDS have passed, when another
driver may have taken the job, it stops (`expired`), so that two drivers never write one job.
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
EXCLUSIVE_PREFIX = "_LEASE."  # <out>/_LEASE.<NAME>: the lease of --exclusive NAME
HEARTBEAT_SECONDS = 5.0
LEASE_SECONDS = 30.0  # six missed heartbeats: a live driver is never taken over by a slow store


def fence_seconds() -> float:
    """Unrenewed this long, the owner starts no new work: two heartbeats before others may take it over,
    a margin for the clocks of two hosts and for stopping (read at call time, so tests can shorten both)."""
    return LEASE_SECONDS - 2 * HEARTBEAT_SECONDS


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


def pid_namespace() -> int | None:
    """This process's PID namespace (Linux), or None: containers given one hostname (compose's `hostname:`)
    still see each other's pids only within one namespace."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def is_stale(lease: dict, now: float) -> bool:
    if now - float(lease.get("heartbeat", 0)) > LEASE_SECONDS:
        return True
    same_pids = lease.get("pidns") in (None, pid_namespace())  # an owner that recorded none: as before
    return lease.get("host") == socket.gethostname() and same_pids and not _pid_alive(int(lease.get("pid", -1)))


class Lease:
    """Taken by a conditional create (If-None-Match: *), renewed by its owner with compare-and-swap
    on the version it last wrote (If-Match), and taken over from a stale owner the same way: of
    two drivers, exactly one wins each step. A store that ignores conditional writes gets the
    old best-effort protocol (write, pause, read back), and the job report says so."""

    key = LEASE_KEY

    def __init__(self, job: Storage, conditional: bool = True):
        # Each renewal is one quick try (the heartbeat tries again 5 s later), so a renewal lands within
        # seconds of the store coming back instead of after the data path's back-off.
        self.job, self.conditional = job.fail_fast(), conditional
        self.owner = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "pidns": pid_namespace()}
        self.version: str | None = None
        self.lost = False  # a renewal was refused: another driver holds the lease, never to be written again
        self.renewed_at: float | None = None  # monotonic time the last document that landed was written
        self.last_error: str | None = None  # why the latest renewal did not land, if it raised
        self._renewing = threading.Lock()  # the heartbeat, a renewal on demand and release never interleave
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _document(self) -> bytes:
        return json.dumps({**self.owner, "heartbeat": time.time()}).encode()

    def _busy(self, current: dict) -> JobBusy:
        return JobBusy(
            f"{self.job.url} is being run by another driver (pid {current.get('pid')} on {current.get('host')}); "
            f"wait for it (`novarch-batch status {self.job.url}`) or stop it, then re-run"
        )

    def unrenewed_seconds(self) -> float:
        return time.monotonic() - self.renewed_at if self.renewed_at is not None else 0.0

    @property
    def fresh(self) -> bool:
        """Renewed within fence_seconds(): the owner may start new work."""
        return not self.lost and self.unrenewed_seconds() <= fence_seconds()

    @property
    def expired(self) -> bool:
        """Taken over, or unrenewed for LEASE_SECONDS, when another driver may take it: stop writing."""
        return self.lost or self.unrenewed_seconds() > LEASE_SECONDS

    def acquire(self) -> None:
        began = time.monotonic()
        if self.conditional:
            self._acquire_conditional()
        else:
            self._acquire_best_effort()
        self.renewed_at = began
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _acquire_conditional(self) -> None:
        for _ in range(3):  # the holder may release between our create and our read
            document = self._document()
            self.version = self.job.create(self.key, document)
            if self.version:
                return
            current = self.job.read_versioned(self.key)
            if current is None:
                continue
            data, version = current
            if data == document:  # ours landed; a resend after its lost answer was what was refused
                self.version = version
                return
            try:
                holder = json.loads(data)
            except ValueError:
                holder = {}
            if not is_stale(holder, time.time()):
                raise self._busy(holder)
            document = self._document()
            self.version = self.job.replace(self.key, document, version) or self._landed(document)  # take over, unless another driver just did
            if self.version:
                return
            raise JobBusy(f"{self.job.url}/{self.key} was just taken by another driver; wait for it, then re-run")
        raise JobBusy(f"{self.job.url}/{self.key} keeps changing hands; wait a minute, then re-run")

    def _acquire_best_effort(self) -> None:
        current = self._read()
        if current and current.get("id") != self.owner["id"] and not is_stale(current, time.time()):
            raise self._busy(current)
        self.job.put_bytes(self.key, self._document())
        # Read back after a short pause: of two drivers racing for a free lease, the last writer wins
        # and the other sees a foreign owner and backs off (best effort: a slow store can fool it).
        time.sleep(0.2)
        if (self._read() or {}).get("id") != self.owner["id"]:
            raise JobBusy(f"{self.job.url}/{self.key} was just taken by another driver; wait for it, then re-run")

    def _read(self) -> dict | None:
        current = self.job.read_versioned(self.key)
        try:
            return json.loads(current[0]) if current else None
        except ValueError:
            return None

    def _landed(self, document: bytes) -> str | None:
        """The version of our own document when it is the one stored: a conditional write that botocore
        resent after losing the first answer is refused by the version that first write made."""
        current = self.job.read_versioned(self.key)
        return current[1] if current is not None and current[0] == document else None

    def renew(self) -> bool:
        """Renew now: True when it landed, False when another driver holds the lease (then it is never
        written again); a store error raises, and the lease just ages."""
        with self._renewing:
            if self.lost:
                return False
            began, document = time.monotonic(), self._document()
            if self.conditional:
                version = self.job.replace(self.key, document, self.version) or self._landed(document)
                self.lost, self.version = version is None, version or self.version
            else:  # no compare-and-swap: a foreign owner read back is a takeover
                self.lost = (self._read() or {}).get("id", self.owner["id"]) != self.owner["id"]
                if not self.lost:
                    self.job.put_bytes(self.key, document)
            if not self.lost:
                self.renewed_at = began
            return not self.lost

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                if not self.renew():
                    return
                self.last_error = None
            except Exception as e:  # a store outage must not kill the driver; the lease just ages (see `expired`)
                self.last_error = (str(e).splitlines() or [type(e).__name__])[0]

    def release(self) -> None:
        self._stop.set()
        # Not started when an interrupt landed inside its start(): join() would raise "cannot join thread
        # before it is started" over the interrupt, and the lease would stay. One started since sees _stop.
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=HEARTBEAT_SECONDS)
        # A renewal still in flight (a slow store) would change the version under the delete.
        renewing = self._renewing.acquire(timeout=HEARTBEAT_SECONDS)
        try:
            if self.conditional and self.version and not self.lost:
                self.job.delete_version(self.key, self.version)
            elif not self.conditional and (self._read() or {}).get("id") == self.owner["id"]:
                self.job.delete(self.key)
        except Exception:
            pass
        finally:
            if renewing:
                self._renewing.release()

    def __enter__(self) -> "Lease":
        try:
            self.acquire()
        except BaseException:  # refused, or interrupted mid-way: give back whatever part is ours
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class ExclusiveLease(Lease):
    """`--exclusive NAME`: the same lease at <out>/_LEASE.NAME, naming the job that holds it."""

    def __init__(self, root: Storage, conditional: bool, name: str, job_url: str):
        super().__init__(root, conditional)
        self.key, self.name = EXCLUSIVE_PREFIX + name, name
        self.owner["job_url"] = job_url

    def _busy(self, current: dict) -> JobBusy:
        running = current.get("job_url", "another job")
        return JobBusy(
            f"--exclusive {self.name}: {running} is still running under {self.job.url} (pid {current.get('pid')} on "
            f"{current.get('host')}), and jobs with --exclusive {self.name} run one at a time; nothing was written. "
            f"Wait for it (`novarch-batch status {running}`) or stop it, then re-run"
        )
