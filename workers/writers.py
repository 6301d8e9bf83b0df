"""Where a shard's images go: one writer per output format, all with the same small interface.

A writer lives for one shard. The actor calls ``write`` once per image, from its upload threads
(concurrently, in any order), then ``close`` once: the writer stores whatever is still pending and
returns the Parquet columns that depend on where the images went (``image_key``, ``image``), in
ascending id order. The shard's Parquet file is written after ``close``, so it commits the shard
whatever the format (docs/format.md).
"""
from __future__ import annotations

import io
import json
import tarfile
from datetime import datetime
from typing import Protocol

from novarch_batch.storage import Storage
from novarch_batch.workers import shard_format


class ShardWriter(Protocol):
    def write(self, sample_id: int, png: bytes, row: dict) -> None:
        """Take one image and its row (every column but image_key and image)."""

    def close(self) -> dict[str, list]:
        """Store what is pending; return {"image_key": [...], "image": [...]} in id order."""

    @staticmethod
    def stored(shard: int, ids: range) -> list[str]:
        """The objects besides its Parquet file that a committed shard's rows point to (keys relative
        to the job folder, all in one folder, so that one listing finds them): what must still be
        there for the shard to be whole."""


class FilesWriter:
    """--format files: one PNG object per image, uploaded by the calling thread (the upload pool)."""

    def __init__(self, storage: Storage, shard: int, created_at: datetime):
        self.storage, self.shard = storage, shard
        self.keys: dict[int, str] = {}

    def write(self, sample_id: int, png: bytes, row: dict) -> None:
        key = shard_format.image_key(self.shard, sample_id)
        self.storage.put_bytes(key, png)
        self.keys[sample_id] = key

    def close(self) -> dict[str, list]:
        ids = sorted(self.keys)
        return {"image_key": [self.keys[i] for i in ids], "image": [None] * len(ids)}

    @staticmethod
    def stored(shard: int, ids: range) -> list[str]:
        return [shard_format.image_key(shard, i) for i in ids]


class ParquetWriter:
    """--format parquet: the PNG bytes go into the shard's own Parquet rows (one object per shard),
    as the Hugging Face Image struct {bytes, path}."""

    def __init__(self, storage: Storage, shard: int, created_at: datetime):
        self.shard = shard
        self.images: dict[int, bytes] = {}

    def write(self, sample_id: int, png: bytes, row: dict) -> None:
        self.images[sample_id] = png

    def close(self) -> dict[str, list]:
        ids = sorted(self.images)
        return {"image_key": [shard_format.embedded_key(self.shard, i) for i in ids],
                "image": [{"bytes": self.images[i], "path": shard_format.image_name(i)} for i in ids]}

    @staticmethod
    def stored(shard: int, ids: range) -> list[str]:
        return []  # the images are in the shard's own rows


class WebDatasetWriter:
    """--format webdataset: one tar per shard holding <id>.png and <id>.json (the row), put in one
    atomic write by ``close``, before the Parquet index that commits the shard."""

    def __init__(self, storage: Storage, shard: int, created_at: datetime):
        self.storage, self.shard = storage, shard
        self.mtime = created_at.timestamp()  # the job's creation time: a re-run writes identical bytes
        self.samples: dict[int, tuple[bytes, dict]] = {}

    def write(self, sample_id: int, png: bytes, row: dict) -> None:
        self.samples[sample_id] = (png, {**row, "image_key": shard_format.member_key(self.shard, sample_id)})

    def close(self) -> dict[str, list]:
        ids = sorted(self.samples)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i in ids:  # a sample's members are adjacent: WebDataset groups them by name up to the first dot
                png, row = self.samples[i]
                self._add(tar, shard_format.image_name(i), png)
                self._add(tar, shard_format.image_name(i, "json"), json.dumps(row, default=_iso, sort_keys=True).encode())
        self.storage.put_bytes(shard_format.tar_key(self.shard), buf.getvalue())
        return {"image_key": [shard_format.member_key(self.shard, i) for i in ids], "image": [None] * len(ids)}

    @staticmethod
    def stored(shard: int, ids: range) -> list[str]:
        return [shard_format.tar_key(shard)]

    def _add(self, tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), self.mtime, 0o644
        tar.addfile(info, io.BytesIO(data))


class NullWriter:
    """Keeps nothing: for benchmarks that measure sampling and encoding without storage."""

    def __init__(self, storage: Storage | None = None, shard: int = 0, created_at: datetime | None = None):
        self.ids: list[int] = []

    def write(self, sample_id: int, png: bytes, row: dict) -> None:
        self.ids.append(sample_id)

    def close(self) -> dict[str, list]:
        return {"image_key": [""] * len(self.ids), "image": [None] * len(self.ids)}

    @staticmethod
    def stored(shard: int, ids: range) -> list[str]:
        return []


# --format's choices (workers/spec.py OUTPUT_FORMATS) to writer classes; "null" is not a user choice.
WRITERS: dict[str, type[ShardWriter]] = {
    "files": FilesWriter,
    "parquet": ParquetWriter,
    "webdataset": WebDatasetWriter,
    "null": NullWriter,
}


def _iso(value):
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
