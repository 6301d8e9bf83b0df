"""Read a finished or running job back from storage: manifests, Parquet rows, images."""
from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from novarch_batch.pipeline import manifest
from novarch_batch.storage import Storage, StorageError, open_storage
from novarch_batch.workers import shard_format


@dataclass
class JobView:
    url: str
    storage: Storage
    job: dict  # job.json

    @classmethod
    def open(cls, url: str) -> "JobView":
        storage = open_storage(url)
        job = manifest.read_json(storage, manifest.JOB_FILE)
        if job is None:
            raise StorageError(f"{url}: no job.json here; pass a job folder, i.e. <out>/<job_id>")
        return cls(url.rstrip("/"), storage, job)

    @property
    def num_shards(self) -> int:
        return int(self.job["shard_plan"]["num_shards"])

    @property
    def count(self) -> int:
        return int(self.job["shard_plan"]["count"])

    def success(self) -> dict | None:
        return manifest.read_json(self.storage, manifest.SUCCESS_FILE)

    def committed(self) -> set[int]:
        return manifest.committed_shards(self.storage)

    def shard_bytes(self, shard: int) -> bytes:
        return self.storage.get_bytes(shard_format.shard_key(shard))

    def shard_table(self, shard: int, data: bytes | None = None) -> pa.Table:
        return pq.read_table(io.BytesIO(data if data is not None else self.shard_bytes(shard)))

    def rows(self, columns: list[str] | None = None):
        """Rows of every committed shard, one shard in memory at a time."""
        for k in sorted(self.committed()):
            yield from self.shard_table(k).select(columns or shard_format.SCHEMA.names).to_pylist()

    def image_bytes(self, row: dict) -> bytes:
        return row["image"] if row.get("image") else self.storage.get_bytes(row["image_key"])

