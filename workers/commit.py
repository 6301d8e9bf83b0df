"""A shard's commit: its checksum beside it, then its Parquet file, created exactly once.

The sidecar (`checksums/part-<k>.sha256`, 64 hex digits; outside `shards/`, which readers open as
one Parquet dataset) is written just before the commit, so a
resumed job learns every committed shard's checksum from tiny objects, never from the shard's
body. The Parquet file is created with a conditional write: of concurrent commits of one shard
exactly one lands; a refused commit of identical bytes counts as already committed. A shard found
committed before it is sampled is not sampled again (`committed_checksum`), and a commit that
finds the shard there leaves its sidecar alone.
"""
from __future__ import annotations

import hashlib

from novarch_batch.storage import Storage, StorageError
from novarch_batch.workers import shard_format


class ShardConflict(StorageError):
    """The shard was committed by another writer with different bytes."""


def sidecar_key(shard: int) -> str:
    return f"checksums/part-{shard:05d}.sha256"


def commit_shard(storage: Storage, shard: int, data: bytes) -> str:
    """Commit one shard's Parquet bytes; return their sha256 (also when they were committed before)."""
    checksum = hashlib.sha256(data).hexdigest()
    key = shard_format.shard_key(shard)
    if not storage.exists(key):  # never describe other bytes than a commit already there
        storage.put_bytes(sidecar_key(shard), checksum.encode())
        if storage.create(key, data) is not None:
            return checksum
    committed = hashlib.sha256(storage.get_bytes(key)).hexdigest()  # rare: a retry whose first answer was lost
    if committed != checksum:
        storage.put_bytes(sidecar_key(shard), committed.encode())  # the sidecar describes what is committed
        raise ShardConflict(f"{storage.url}/{key}: already committed by another writer with other bytes "
                            f"(sha256 {committed[:12]}…); run `novarch-batch verify {storage.url}`")
    return checksum


def committed_checksum(storage: Storage, shard: int) -> str | None:
    """The sha256 of the shard's commit when it is committed, else None."""
    return read_checksum(storage, shard) if storage.exists(shard_format.shard_key(shard)) else None


def sidecar_checksum(storage: Storage, shard: int) -> str | None:
    """The sha256 written beside a shard at its commit, or None where there is none (shards committed
    before sidecars existed, or a sidecar deleted since)."""
    found = storage.read_versioned(sidecar_key(shard))
    if found is not None and len(found[0].strip()) == 64:
        return found[0].decode().strip()
    return None


def read_checksum(storage: Storage, shard: int) -> str:
    """A committed shard's sha256 from its sidecar; a shard without one is hashed."""
    return sidecar_checksum(storage, shard) or hashlib.sha256(storage.get_bytes(shard_format.shard_key(shard))).hexdigest()
