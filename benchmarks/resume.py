"""Resume cost on a real S3 server (the embedded SeaweedFS): a job whose shards are all committed
but _SUCCESS is missing, as after an interrupted night, then `driver.run` finishes it.

    python -m benchmarks.resume --shards 10000 --runs 3 --out benchmarks/results/resume-seaweedfs.json

Counts every S3 request the resuming driver makes (botocore's before-call event), by operation,
and whether any GET asked for a shard body. The shard files are stand-ins (a resume never opens
them); their sidecar checksums are real.
"""
from __future__ import annotations

import collections
import hashlib
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import click

from benchmarks.common import machine, median, save
from novarch_batch.pipeline import driver, manifest
from novarch_batch.pipeline.seaweed import EmbeddedS3
from novarch_batch.pipeline.spec import build_spec
from novarch_batch.storage.s3 import S3Storage
from novarch_batch.workers import shard_format
from novarch_batch.workers.commit import sidecar_key


def seed_job(spec) -> S3Storage:
    job = S3Storage.from_url(f"{spec.output.out}/{spec.job_id}")
    manifest.prepare_job(job, spec)

    def commit(k: int) -> None:
        body = f"shard {k}".encode()
        job.put_bytes(sidecar_key(k), hashlib.sha256(body).hexdigest().encode())
        job.put_bytes(shard_format.shard_key(k), body)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(commit, range(spec.num_shards)))
    return job


def counted_run(spec) -> tuple[float, collections.Counter, list[str]]:
    """driver.run with every S3 request counted; returns seconds, requests by operation, shard bodies read."""
    calls, bodies = collections.Counter(), []
    original = S3Storage._make_client

    def make_client(self, preflight):
        client = original(self, preflight)

        def count(model, params, **_):
            calls[model.name] += 1
            if model.name == "GetObject" and params.get("Key", "").endswith(".parquet"):
                bodies.append(params["Key"])

        client.meta.events.register("before-call.s3.*", count)
        return client

    S3Storage._make_client = make_client
    try:
        started = time.perf_counter()
        report = driver.run(spec)
        seconds = time.perf_counter() - started
    finally:
        S3Storage._make_client = original
    assert report.complete and report.shards_skipped == spec.num_shards
    return seconds, calls, bodies


@click.command()
@click.option("--shards", default=10_000, show_default=True)
@click.option("--runs", default=3, show_default=True)
@click.option("--out", default="benchmarks/results/resume-seaweedfs.json", show_default=True)
def main(shards, runs, out):
    import os

    server = EmbeddedS3(tempfile.mkdtemp(prefix="resume-bench-"))
    server.start()
    try:
        os.environ.update(server.env())
        rows = []
        for run in range(runs):
            spec = build_spec(count=shards, out=f"s3://{server.bucket}/resume-{run}-{time.time_ns()}", shard_size=1)
            started = time.perf_counter()
            job = seed_job(spec)
            seeded = time.perf_counter() - started
            seconds, calls, bodies = counted_run(spec)
            assert job.exists(manifest.SUCCESS_FILE)
            rows.append({"seconds": round(seconds, 2), "requests": dict(calls), "requests_total": sum(calls.values()),
                         "shard_body_gets": len(bodies), "seed_seconds": round(seeded, 1)})
            print(f"run {run + 1}: {rows[-1]}", flush=True)
    finally:
        server.stop()
    summary = {"shards": shards, "median_seconds": median([r["seconds"] for r in rows]),
               "median_requests": median([r["requests_total"] for r in rows]), "shard_body_gets": max(r["shard_body_gets"] for r in rows)}
    print(summary)
    save({"machine": machine(), "store": "SeaweedFS (embedded, loopback)", "summary": summary, "runs": rows}, out)


if __name__ == "__main__":
    main()
