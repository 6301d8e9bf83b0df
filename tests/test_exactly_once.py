"""Exactly-once commits and one driver per job, with S3 conditional writes on a real SeaweedFS;
a resume that reads no shard body; a finished job that is never written again."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from novarch_batch.pipeline import driver, lease as lease_module
from novarch_batch.pipeline.lease import LEASE_KEY, JobBusy, Lease
from novarch_batch.pipeline.progress import Progress
from novarch_batch.pipeline.scheduler import JobFailed
from novarch_batch.pipeline.spec import build_spec
from novarch_batch.pipeline.verify import verify
from novarch_batch.storage import LocalStorage, StorageError, open_storage
from novarch_batch.storage.s3 import PROBE_PREFIX, S3Storage
from novarch_batch.workers import shard_format
from novarch_batch.workers.commit import ShardConflict, commit_shard
from novarch_batch.workers.shard_worker import ShardWorker
from novarch_batch.workers.spec import SamplingConfig
from novarch_batch.workers.tasks import ShardTask
from tests.procs import wait_for

CLI = str(Path(sys.executable).with_name("novarch-batch"))


@pytest.fixture(params=["s3", "local"])
def store(request, s3_env, s3_url, tmp_path):
    return open_storage(s3_url) if request.param == "s3" else LocalStorage(tmp_path / "store")


def at_once(n: int, call) -> list:
    """`call(i)` from n threads released together."""
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def test_32_concurrent_commits_of_one_shard_have_one_winner(store):
    created = at_once(32, lambda i: store.create(shard_format.shard_key(7), f"writer {i}".encode()))
    winners = [i for i, version in enumerate(created) if version is not None]
    assert len(winners) == 1
    assert store.get_bytes(shard_format.shard_key(7)) == f"writer {winners[0]}".encode()


def test_a_refused_commit_of_identical_bytes_is_already_committed(store):
    data = b"the same shard, sampled twice"
    assert at_once(8, lambda i: commit_shard(store, 3, data)) == [commit_shard(store, 3, data)] * 8
    with pytest.raises(ShardConflict, match="already committed by another writer with other bytes"):
        commit_shard(store, 3, b"other bytes")
    assert store.get_bytes(shard_format.shard_key(3)) == data
    assert store.get_bytes("checksums/part-00003.sha256").decode() == commit_shard(store, 3, data)


def test_a_stale_lease_is_taken_over_by_exactly_one_driver(store):
    store.put_bytes(LEASE_KEY, json.dumps({"id": "gone", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600}).encode())

    def take(_):
        try:
            lease = Lease(store)
            lease.acquire()
            return lease
        except JobBusy:
            return None

    leases = [lease for lease in at_once(8, take) if lease]
    assert len(leases) == 1
    holder = json.loads(store.get_bytes(LEASE_KEY))
    assert holder["id"] == leases[0].owner["id"]
    leases[0].release()
    assert not store.exists(LEASE_KEY)


def test_a_fresh_lease_of_this_host_is_stale_only_when_its_pid_is_gone_here():
    """A killed driver re-run on the same machine resumes at once (its pid is gone); a container that shares
    the hostname but not the PID namespace cannot see the live owner's pid, and must not take the lease."""
    import os
    import socket

    from novarch_batch.pipeline.lease import is_stale, pid_namespace

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    here = {"host": socket.gethostname(), "pid": int(gone), "heartbeat": time.time()}
    assert is_stale({**here, "pidns": pid_namespace()}, time.time())
    assert is_stale(here, time.time())  # a lease written before the namespace was recorded
    assert not is_stale({**here, "pidns": -1}, time.time())  # another namespace: its pid means nothing here
    assert not is_stale({**here, "pid": os.getpid(), "pidns": pid_namespace()}, time.time())


def test_an_interrupt_as_the_heartbeat_starts_gives_the_lease_back(store, monkeypatch):
    """SIGTERM or Ctrl-C that lands inside the heartbeat thread's start() (seen under load, right after the
    lease was written): the interrupt comes out, not "cannot join thread before it is started", and the
    lease is gone, so a re-run need not wait for it to go stale."""
    from novarch_batch.pipeline.interrupts import Terminated

    def interrupted(thread):
        raise Terminated()

    monkeypatch.setattr(threading.Thread, "start", interrupted)
    with pytest.raises(Terminated):
        with Lease(store):
            pass
    assert not store.exists(LEASE_KEY)


def test_a_lease_write_resent_after_its_lost_answer_is_still_ours(store, monkeypatch):
    """botocore resends a PUT whose answer it lost (a timeout, a 5xx after the write landed); the resend
    then fails its own condition. The lease reads its own document back instead of calling itself taken over
    (or, taking it, "run by another driver" naming its own pid)."""
    kind = type(store.fail_fast())

    def resent(real):
        def twice(self, *args):  # the first request lands, its answer is lost, the same request again
            real(self, *args)
            return real(self, *args)
        return twice

    with monkeypatch.context() as patched:  # (monkeypatch itself also holds the store's environment)
        patched.setattr(kind, "create", resent(kind.create))
        patched.setattr(kind, "replace", resent(kind.replace))
        lease = Lease(store)
        lease.acquire()
        assert lease.renew() and not lease.lost
    assert json.loads(store.get_bytes(LEASE_KEY))["id"] == lease.owner["id"]
    lease.release()
    assert not store.exists(LEASE_KEY)


def test_a_best_effort_lease_sees_a_takeover(store):
    """A store without conditional writes: the heartbeat reads the lease before it writes, so a driver
    taken over stops instead of both drivers writing their heartbeats (and the job) on and on."""
    lease = Lease(store, conditional=False)
    lease.acquire()
    assert lease.renew() and lease.fresh
    store.put_bytes(LEASE_KEY, json.dumps({"id": "other", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}).encode())
    assert not lease.renew() and lease.lost and lease.expired and not lease.fresh
    lease.release()
    assert json.loads(store.get_bytes(LEASE_KEY))["id"] == "other"  # not ours to delete


def test_a_committed_shard_is_not_sampled_again(tmp_path, monkeypatch):
    """An actor that committed a shard and died before its answer came back: the shard's next attempt finds
    the commit and writes nothing, where it used to overwrite the images the committed rows name."""
    worker = ShardWorker("novarch-tiny", "cpu", threads=1)
    task = ShardTask("job", str(tmp_path), 0, 0, 8, SamplingConfig(steps=2), 8, "2026-01-01T00:00:00+00:00", "files")
    first = worker.run_shard(task)
    assert first.ok and first.images == 8
    writes: list[str] = []
    with monkeypatch.context() as patched:
        patched.setattr(LocalStorage, "put_bytes", lambda self, key, data: writes.append(key))
        patched.setattr(LocalStorage, "create", lambda self, key, data: writes.append(key))
        again = worker.run_shard(task)
    assert again.ok and again.checksum == first.checksum and again.images == 8
    assert writes == []


@pytest.fixture
def short_lease(monkeypatch):
    """Heartbeats every 0.25 s and a lease stale after 3 s (no new shard after 2.5 s unrenewed)."""
    monkeypatch.setattr(lease_module, "HEARTBEAT_SECONDS", 0.25)
    monkeypatch.setattr(lease_module, "LEASE_SECONDS", 3.0)


def when_committed(job: Path, shards: int, then) -> threading.Thread:
    """Call `then()` on a thread once `shards` Parquet files are in the job folder."""
    def watch():
        wait_for(lambda: len(list(job.glob("shards/*.parquet"))) >= shards, 120, f"{shards} committed shards", interval=0.05)
        then()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_driver_taken_over_mid_job_stops_its_actors_at_once(ray_local, tmp_path, short_lease):
    """Another driver takes the lease (its compare-and-swap after this one stalled): this driver's next
    heartbeat is refused and it stops at once, its actors killed, instead of sampling to the end beside the
    new owner and only then saying so."""
    spec = build_spec(count=256, out=str(tmp_path), steps=4, shard_size=8, batch_size=8, actors=1)
    job = tmp_path / spec.job_id
    store, taken = LocalStorage(job), []

    def take_over():
        current, version = store.read_versioned(LEASE_KEY)
        store.replace(LEASE_KEY, json.dumps({"id": "other", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}).encode(), version)
        taken.append(time.monotonic())

    when_committed(job, 2, take_over)
    with pytest.raises(JobBusy, match="another driver took this job over"):
        driver.run(spec)
    stopped = time.monotonic()
    assert taken and stopped - taken[0] < 3.0
    assert len(list(job.glob("shards/*.parquet"))) < spec.num_shards - 4
    assert not (job / "_SUCCESS").exists()
    assert json.loads(store.get_bytes(LEASE_KEY))["id"] == "other"  # the new owner's lease stays


def test_a_driver_whose_lease_goes_unrenewed_stops_and_a_rerun_resumes(ray_local, tmp_path, short_lease, monkeypatch):
    """The store stops taking this driver's heartbeats (a partition, the driver's credentials alone expired):
    no new shard starts once the lease is unconfirmed, and once another driver may take the job (the lease's
    age) the driver stops its actors, so two drivers never write one job. A re-run resumes it whole."""
    spec = build_spec(count=256, out=str(tmp_path), steps=4, shard_size=8, batch_size=8, actors=1)
    job = tmp_path / spec.job_id
    real_replace = LocalStorage.replace

    def refused(self, key, data, version):
        if key == LEASE_KEY and failing:
            raise StorageError(f"{self.url}/{key}: the store did not answer")
        return real_replace(self, key, data, version)

    failing: list[bool] = []
    monkeypatch.setattr(LocalStorage, "replace", refused)
    when_committed(job, 2, lambda: failing.append(True))
    notes = io.StringIO()
    with pytest.raises(JobFailed, match="could not renew its lease for [0-9]+ s .*re-run the same command to resume"):
        driver.run(spec, Progress(enabled=False, stream=notes))
    assert "no new shard starts until it is" in notes.getvalue()
    assert len(list(job.glob("shards/*.parquet"))) < spec.num_shards - 4 and not (job / "_SUCCESS").exists()
    failing.clear()
    report = driver.run(spec)
    assert report.complete and report.shards_skipped + report.shards_sampled == spec.num_shards
    assert verify(str(job), full=True).ok


def test_a_store_that_ignores_conditional_writes_is_detected(s3_env, s3_url):
    class IgnoresTheHeader(S3Storage):
        def create(self, key, data):  # what a store without If-None-Match support does: a plain PUT
            self.put_bytes(key, data)
            return "etag"

    class IgnoresIfMatch(S3Storage):
        def replace(self, key, data, version):  # a compare-and-swap that always swaps
            self.put_bytes(key, data)
            return "etag"

    class RefusesTheHeaders(S3Storage):
        def create(self, key, data):  # "501 NotImplemented" to a conditional PUT, as some S3-compatible stores say
            from botocore.exceptions import ClientError
            raise self._error(ClientError({"Error": {"Code": "NotImplemented"}, "ResponseMetadata": {"HTTPStatusCode": 501}},
                                          "PutObject"), key)

    plain = S3Storage.from_url(s3_url)
    assert plain.honours_conditional_writes()
    for store in (IgnoresTheHeader, IgnoresIfMatch, RefusesTheHeaders):
        assert not store.from_url(s3_url).honours_conditional_writes(), store.__name__
    listed = plain.client.list_objects_v2(Bucket=plain.bucket, Prefix=plain.prefix).get("Contents", [])
    assert not [o["Key"] for o in listed if PROBE_PREFIX in o["Key"]]  # every probe removed


def test_two_drivers_started_at_once_one_samples(s3_env, s3_url):
    cmd = [CLI, "submit", "--count", "64", "--steps", "4", "--shard-size", "16", "--batch-size", "16", "--out", s3_url, "--json"]
    procs = at_once(2, lambda i: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    (ran,) = [json.loads(out.strip().splitlines()[-1]) for code, out, _ in results if code == 0]
    (refused,) = [err for code, _, err in results if code == 1]
    assert ran["images_sampled"] == 64 and ran["conditional_writes"] is True
    assert "being run by another driver" in refused or "just taken by another driver" in refused, refused
    assert verify(ran["url"], full=True).ok


def test_resume_reads_no_shard_body_and_a_finished_job_is_never_written(ray_local, s3_env, s3_url, monkeypatch):
    spec = build_spec(count=32, out=s3_url, steps=1, shard_size=8, batch_size=8, actors=2)
    driver.run(spec)
    job = S3Storage.from_url(f"{s3_url}/{spec.job_id}")
    job.delete("_SUCCESS")
    job.delete(shard_format.shard_key(1))  # an interrupted job: shard 1 and _SUCCESS missing
    reads: list[str] = []
    original = S3Storage.get_bytes
    monkeypatch.setattr(S3Storage, "get_bytes", lambda self, key: reads.append(key) or original(self, key))
    report = driver.run(spec)
    assert report.shards_sampled == 1 and report.shards_skipped == 3
    assert [key for key in reads if key.endswith(".parquet")] == []  # checksums came from the sidecars

    def listing():
        client = job.client
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=job.bucket, Prefix=job.prefix + "/")
        return {o["Key"]: (o["LastModified"], o["ETag"]) for page in pages for o in page.get("Contents", [])}

    before = listing()
    time.sleep(1.1)  # LastModified has one-second resolution
    done = subprocess.run([CLI, "submit", "--count", "32", "--steps", "1", "--shard-size", "8", "--out", s3_url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("already complete: 32 images in 4 shards")
    assert listing() == before  # not a byte written: no storage event fires again


def test_verify_tells_access_denied_from_missing(s3_server, s3_env, s3_url, monkeypatch):
    with pytest.raises(StorageError, match="no job.json here"):
        verify(f"{s3_url}/no-such-job")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match="access denied for key"):
        verify(f"{s3_url}/no-such-job")
