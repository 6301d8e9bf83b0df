"""Where jobs are written: one ``Storage`` interface over a local folder or S3.

Used by the actors (the data path) and by the driver (plans, manifests, reading back); it
imports nothing else of the project.
"""
from __future__ import annotations

from urllib.parse import urlparse

from novarch_batch.storage.base import UPLOAD_CONCURRENCY, Storage, StorageError, join, sha256_file
from novarch_batch.storage.local import LocalStorage

__all__ = ["UPLOAD_CONCURRENCY", "LocalStorage", "Storage", "StorageError", "join", "open_storage", "sha256_file"]
SCHEMES = ("file", "s3")


def open_storage(url: str) -> Storage:
    """Storage for a local path, ``file://`` URL or ``s3://bucket/prefix``."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStorage(parsed.path if parsed.scheme == "file" else url)
    if parsed.scheme == "s3":
        from novarch_batch.storage.s3 import S3Storage  # boto3 is imported only for S3 jobs

        return S3Storage.from_url(url)
    raise StorageError(
        f"--out {url}: unknown scheme '{parsed.scheme}://'; use a local path, file://PATH or s3://BUCKET/PREFIX"
    )
