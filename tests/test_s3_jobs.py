"""Jobs into a real S3 server (SeaweedFS): verify, downstream readers, resume, outage, secrets."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest

from novarch_batch.pipeline import driver
from novarch_batch.storage.s3 import S3Storage, pyarrow_filesystem, storage_options_for_polars
from novarch_batch.pipeline.spec import build_spec
from novarch_batch.storage import StorageError
from novarch_batch.pipeline.verify import verify

COUNT = 200
CLI = str(Path(sys.executable).with_name("novarch-batch"))


@pytest.fixture(scope="module")
def s3_job(ray_local, s3_server):
    out = f"s3://{s3_server.bucket}/jobs-{time.time_ns()}"
    spec = build_spec(count=COUNT, out=out, steps=2, shard_size=50, batch_size=50, actors=2, seed=4, format="files")  # per-image objects on S3
    report = driver.run(spec)
    return spec, report, f"{out}/{spec.job_id}"


def test_200_images_to_s3_pass_verify(s3_job):
    spec, report, url = s3_job
    assert report.complete and report.images_sampled == COUNT and report.shards == 4
    result = verify(url, full=True)
    assert result.ok, result.problems
    assert result.rows == COUNT and result.images_checked == COUNT


def test_duckdb_and_polars_read_the_shards_as_one_table(s3_job, s3_server):
    _, _, url = s3_job
    shards = url.removeprefix("s3://") + "/shards"
    dataset = ds.dataset(shards, filesystem=pyarrow_filesystem(), format="parquet")
    assert dataset.count_rows() == COUNT
    rows = duckdb.sql("select count(*), count(distinct id), min(id), max(id) from dataset").fetchall()[0]
    assert rows == (COUNT, COUNT, 0, COUNT - 1)
    frame = pl.read_parquet(f"{url}/shards/*.parquet", storage_options=storage_options_for_polars())
    assert frame.height == COUNT and frame["id"].n_unique() == COUNT
    assert set(frame["image_key"].str.slice(0, 7)) == {"images/"}


def test_second_run_samples_nothing_and_leaves_one_copy(s3_job):
    spec, _, url = s3_job
    report = driver.run(spec)
    assert report.shards_sampled == 0 and report.images_sampled == 0 and report.shards_skipped == 4
    keys = S3Storage.from_url(url).list("images/")
    assert len(keys) == COUNT == len(set(keys))


def test_wrong_credentials_are_refused_before_sampling(s3_server, tmp_path):
    env = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret-at-all", "PATH": "/usr/bin:/bin"}
    cmd = [CLI, "submit", "--count", "8", "--out", f"s3://{s3_server.bucket}/refused", "--json"]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert "access denied for key" in line and "check AWS_PROFILE or AWS_ACCESS_KEY_ID" in line
    assert s3_server.env()["AWS_ACCESS_KEY_ID"] not in proc.stderr and "not-the-secret-at-all" not in proc.stderr
    assert time.monotonic() - started < 60
    assert S3Storage.from_url(f"s3://{s3_server.bucket}/refused").list() == []


def test_missing_bucket_fails_fast(s3_server):
    spec = build_spec(count=8, out="s3://no-such-bucket-here/x", steps=1)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        driver.run(spec)


def test_store_outage_of_ten_seconds_is_ridden_out(ray_local, s3_server):
    out = f"s3://{s3_server.bucket}/outage-{time.time_ns()}"
    spec = build_spec(count=96, out=out, steps=4, shard_size=8, batch_size=4, actors=2, seed=8)
    job = S3Storage.from_url(f"{out}/{spec.job_id}")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(report=driver.run(spec)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not job.list("shards/") and time.monotonic() < deadline:
        time.sleep(0.2)
    s3_server.stop()
    time.sleep(10)
    s3_server.start()
    thread.join(timeout=300)
    report = outcome["report"]
    assert report.complete
    result = verify(f"{out}/{spec.job_id}", full=True)
    assert result.ok, result.problems


def test_outage_beyond_the_retry_budget_fails_cleanly(s3_server, tmp_path):
    """The driver process exits 1 naming the problem; every committed shard has all its images."""
    out = f"s3://{s3_server.bucket}/down-{time.time_ns()}"
    # Two botocore attempts per request and a 0.5 s back-off unit: the budget runs out in seconds, not 15 s.
    env = {**s3_server.env(), "NOVARCH_S3_MAX_ATTEMPTS": "2", "NOVARCH_RETRY_DELAY_S": "0.5", "RAY_ADDRESS": "", "PATH": "/usr/bin:/bin"}
    cmd = [CLI, "submit", "--count", "64", "--steps", "4", "--shard-size", "8", "--batch-size", "4", "--actors", "2", "--out", out]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        storage = S3Storage.from_url(out)
        deadline = time.monotonic() + 180
        while not [k for k in storage.list() if "/shards/" in k] and time.monotonic() < deadline:
            time.sleep(0.2)
        s3_server.stop()
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        s3_server.start()
    assert proc.returncode == 1, stderr
    last = stderr.strip().splitlines()[-1]
    # Whichever gives up first names the store: a shard's last attempt, or the lease the store stopped renewing
    # (at 30 s, when another driver could take the job over).
    assert last.startswith("novarch-batch: error: ") and "cannot reach endpoint" in last, last
    assert "gave up after 3 attempts" in last or "could not renew its lease" in last, last
    job_url = f"{out}/{next(iter({k.split('/')[0] for k in storage.list()}))}"
    result = verify(job_url, full=True)
    problems = [p for p in result.problems if "missing" not in p and "rows, expected" not in p]
    assert problems == [], problems  # incomplete, but nothing committed without its images
    assert not result.ok


def test_model_from_s3_is_fetched_and_checked(ray_local, s3_server, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # this process's node cache; actors keep theirs
    models = S3Storage.from_url(f"s3://{s3_server.bucket}/models-{time.time_ns()}/novarch-tiny")
    for path in model_dir.iterdir():
        models.put_bytes(path.name, path.read_bytes())
    out = f"s3://{s3_server.bucket}/s3model-{time.time_ns()}"
    spec = build_spec(count=8, out=out, steps=2, shard_size=8, actors=1, model=models.url)
    assert spec.model == models.url and spec.model_sha256 == build_spec(count=8, steps=2).model_sha256
    report = driver.run(spec)
    assert report.complete and verify(f"{out}/{spec.job_id}", full=True).ok
    from novarch_batch.workers.model_cache import ModelIntegrityError, fetch_model_folder

    with pytest.raises(ModelIntegrityError):  # what an actor does when its node's copy is not the spec's model
        fetch_model_folder(models.url, expected_sha256="0" * 64)
