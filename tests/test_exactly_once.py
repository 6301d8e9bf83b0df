"""Exactly-once commits and one driver per job, with S3 conditional writes on a real SeaweedFS;
a resume that reads no shard body; a finished job that is never written again."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from novarch_batch.pipeline import driver
from novarch_batch.pipeline.lease import LEASE_KEY, JobBusy, Lease
from novarch_batch.pipeline.spec import build_spec
from novarch_batch.pipeline.verify import verify
from novarch_batch.storage import LocalStorage, StorageError, open_storage
from novarch_batch.storage.s3 import S3Storage
from novarch_batch.workers import shard_format
from novarch_batch.workers.commit import ShardConflict, commit_shard

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


def test_a_store_that_ignores_conditional_writes_is_detected(s3_env, s3_url):
    class IgnoresTheHeader(S3Storage):
        def create(self, key, data):  # what a store without If-None-Match support does: a plain PUT
            self.put_bytes(key, data)
            return "etag"

    assert S3Storage.from_url(s3_url).honours_conditional_writes()
    assert not IgnoresTheHeader.from_url(s3_url).honours_conditional_writes()


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
