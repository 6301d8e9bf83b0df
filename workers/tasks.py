"""What the driver and a sampler actor exchange: a shard to sample, and small stats back.

Kept free of torch so the driver imports it without the sampler's dependencies. The task carries
the job's SamplingConfig whole: no option is re-typed between the CLI and the Parquet rows.
"""
from __future__ import annotations

from dataclasses import dataclass

from novarch_batch.workers.spec import SamplingConfig

FAULT_ENV = "NOVARCH_FAULT_FAIL_SHARDS"  # test-only fault hook: comma-separated shard indices that always fail
# Actors compute on this device whatever Ray gave them: with "cpu", GPU scheduling (fake GPU
# nodes, `ray start --num-gpus`) is testable on machines without a GPU.
FORCE_DEVICE_ENV = "NOVARCH_FORCE_DEVICE"


@dataclass(frozen=True)
class ShardTask:
    job_id: str
    job_url: str  # storage root of the job folder
    shard: int
    start: int
    stop: int
    sampling: SamplingConfig
    batch_size: int
    created_at: str  # the job's creation time (ISO 8601): every row gets it, so re-runs write identical bytes
    format: str = "files"  # --format: which writer stores the images (workers/writers.py)


@dataclass
class ShardResult:
    shard: int
    ok: bool
    images: int = 0
    seconds: float = 0.0
    sample_seconds: float = 0.0
    worker: str = ""
    error: str | None = None
    checksum: str = ""  # sha256 of the committed Parquet file
    store_fault: bool = False  # the error came from the storage, which every actor shares: a new actor would not help
