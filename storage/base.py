"""What every output location offers: the Storage interface, its error, key joining and checksums.

Keys are always '/'-separated and relative to the storage root (the job folder or the
``--out`` prefix). Every ``put_bytes`` is atomic: a reader sees either nothing or the whole
object, which is what lets a shard's Parquet file act as its commit (DESIGN.md).
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Protocol

# Threads per actor that encode and upload images; the S3 client keeps one connection for each
# (storage.s3), so both sides read this one number.
UPLOAD_CONCURRENCY = 16


class StorageError(RuntimeError):
    """A storage operation failed; the message names the fix and holds no secret."""


class Storage(Protocol):
    url: str

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def child(self, prefix: str) -> "Storage": ...
    # Conditional writes: what makes a commit or a lease exactly-once. A version is an opaque tag
    # (the S3 ETag, a local file's sha256); None / False mean the condition did not hold.
    def create(self, key: str, data: bytes) -> str | None: ...
    def read_versioned(self, key: str) -> tuple[bytes, str] | None: ...
    def replace(self, key: str, data: bytes, version: str) -> str | None: ...
    def delete_version(self, key: str, version: str) -> bool: ...
    def honours_conditional_writes(self) -> bool: ...
    # Pre-flight, failing fast with the fix: reading writes nothing; writing leaves nothing behind.
    def check_readable(self) -> None: ...
    def check_writable(self) -> None: ...
    def prune(self) -> None: ...  # remove the folder if empty (a folder store only)
    # The same objects through requests that fail in seconds instead of riding out an outage: for a
    # lease's heartbeat, which tries again by itself every few seconds.
    def fail_fast(self) -> "Storage": ...


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *[p.strip("/") for p in parts if p]])


BUCKET_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")  # what botocore itself accepts (AWS's own rule is stricter)


def is_s3_url(url: str) -> bool:
    return url[:5].lower() == "s3://"  # a URL's scheme is case-insensitive


def parse_s3_url(url: str) -> tuple[str, str]:
    """s3://BUCKET/PREFIX -> (bucket, prefix), or a StorageError naming the form."""
    if not is_s3_url(url):
        raise StorageError(f"{url}: not an S3 URL; use s3://BUCKET/PREFIX")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"{url}: no bucket; use s3://BUCKET/PREFIX")
    if not BUCKET_NAME.fullmatch(bucket):
        raise StorageError(f"{url}: '{bucket}' is not a bucket name (letters, digits, '.', '-', '_'); use s3://BUCKET/PREFIX")
    return bucket, prefix


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()
