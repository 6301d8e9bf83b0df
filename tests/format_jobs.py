"""One small job per image-storing --format on the session's S3 server, made once per test process
(each xdist worker is one) and shared by tests/test_formats.py (as local copies) and tests/test_readers.py."""
from __future__ import annotations

import functools
import time
from pathlib import Path

COUNT, SHARD_SIZE = 6, 3


@functools.cache
def s3_format_jobs(bucket: str) -> dict[str, str]:
    """{format: job url}; needs the session's Ray and S3 server up (ray_local, s3_server)."""
    from novarch_batch.pipeline import driver
    from novarch_batch.pipeline.spec import build_spec

    out = f"s3://{bucket}/formats-{time.time_ns()}"
    urls = {}
    for fmt, encode_processes in (("parquet", 2), ("webdataset", 0)):  # PNGs from an encoder pool inside the actor, and inline
        spec = build_spec(count=COUNT, out=out, steps=1, shard_size=SHARD_SIZE, batch_size=SHARD_SIZE, actors=1, seed=3,
                          class_name="house", format=fmt, encode_processes=encode_processes)
        assert driver.run(spec).complete
        urls[fmt] = f"{out}/{spec.job_id}"
    return urls


def copy_job(url: str, dest: Path) -> Path:
    """Download a job folder (a few small objects) into dest/<job_id>."""
    from novarch_batch.storage import open_storage

    source = open_storage(url)
    folder = dest / url.rstrip("/").rsplit("/", 1)[-1]
    for key in source.list(""):
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(source.get_bytes(key))
    return folder
