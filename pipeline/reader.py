"""Read a finished or running job back from storage: manifests, Parquet rows, images.

Reads every --format and every schema version (docs/format.md): an image is a file named by
`image_key`, the `image` column of its row (v2: {bytes, path}; v1: bare bytes), or a member of
its shard's WebDataset tar (`webdataset/part-<shard>.tar#<id>.png`).
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from novarch_batch.pipeline import manifest
from novarch_batch.storage import Storage, StorageError, open_storage
from novarch_batch.workers import shard_format


class DamagedShard(StorageError):
    """A committed shard's Parquet file that cannot be read; the message names it and why."""


@dataclass
class JobView:
    url: str
    storage: Storage
    job: dict  # job.json
    _tar: tuple[str, dict[str, bytes], list[str]] | None = field(default=None, repr=False)  # the last tar read: rows come in id order

    @classmethod
    def open(cls, url: str) -> "JobView":
        storage = open_storage(url)
        storage.check_readable()  # a missing bucket is named as such, an unreachable endpoint fails in seconds
        job = manifest.read_job(storage)
        if job is None:
            if storage.list("shards/"):
                raise StorageError(f"{url}: job.json is missing, yet shards/ is not empty; restore it from a copy, or re-run "
                                   "the same submit, which writes it again with the shards' creation time")
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

    @property
    def shard_size(self) -> int:
        return int(self.job["shard_plan"]["shard_size"])

    def committed(self) -> set[int]:
        return manifest.committed_shards(self.storage)

    def shards_missing_images(self, indices) -> dict[int, str]:
        """Of these committed shards, those whose images (PNGs or tar) are not all in storage: {shard: first missing}."""
        return manifest.shards_missing_images(self.storage, manifest.job_format(self.job), self.count, self.shard_size, indices)

    def shard_bytes(self, shard: int) -> bytes:
        return self.storage.get_bytes(shard_format.shard_key(shard))

    def shard_table(self, shard: int, data: bytes | None = None) -> pa.Table:
        # ParquetFile.read, not pq.read_table: read_table over an in-memory file leaves work in pyarrow's
        # threads that aborts the process at exit in about half the runs ("terminate called without an
        # active exception", exit 134; pyarrow 26; apache/arrow#33975), after the command has printed
        data = data if data is not None else self.shard_bytes(shard)  # a store's refusal stays a StorageError of its own
        try:
            return pq.ParquetFile(pa.BufferReader(data)).read()
        except (pa.ArrowException, OSError) as e:
            raise DamagedShard(f"{self.url}/{shard_format.shard_key(shard)}: not readable as Parquet ({str(e).splitlines()[0]})") from None

    def rows(self, columns: list[str] | None = None):
        """Rows of every committed shard, one shard in memory at a time."""
        for k in sorted(self.committed()):
            table = self.shard_table(k)
            yield from (table.select(columns) if columns else table).to_pylist()

    def image_bytes(self, row: dict) -> bytes:
        """The PNG bytes of a row (needs its `image_key` and `image` columns)."""
        image = row.get("image")
        if isinstance(image, dict):  # schema v2: the Hugging Face Image struct
            image = image.get("bytes")
        if image:
            return image
        container, _, member = row["image_key"].partition("#")
        if container.endswith(".tar"):
            return self.tar_members(container)[member]
        return self.storage.get_bytes(row["image_key"])

    def tar_members(self, key: str) -> dict[str, bytes]:
        """A shard's tar as {member name: bytes}; the last one read is kept, so reading its images one by one costs one GET."""
        self._read_tar(key)
        return self._tar[1]

    def tar_names(self, key: str) -> list[str]:
        """Every entry's name in a shard's tar, in order, repeats included (a tar may hold a name twice)."""
        self._read_tar(key)
        return self._tar[2]

    def _read_tar(self, key: str) -> None:
        if self._tar is None or self._tar[0] != key:
            with tarfile.open(fileobj=io.BytesIO(self.storage.get_bytes(key))) as tar:
                entries = tar.getmembers()
                members = {m.name: tar.extractfile(m).read() for m in entries if m.isfile()}
            self._tar = (key, members, [m.name for m in entries])

