"""Where jobs are written: one ``Storage`` interface over a local folder or S3.

Used by the actors (the data path) and by the driver (plans, manifests, reading back); it
imports nothing else of the project.
"""
from __future__ import annotations

import re
from urllib.parse import unquote

from novarch_batch.storage.base import UPLOAD_CONCURRENCY, Storage, StorageError, join, sha256_file
from novarch_batch.storage.local import LocalStorage

__all__ = ["UPLOAD_CONCURRENCY", "LocalStorage", "Storage", "StorageError", "join", "local_path", "open_storage",
           "sha256_file"]
URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)


def local_path(url: str) -> str | None:
    """The folder a location names on this machine, or None for s3://. Only SCHEME:// starts a URL, so
    a plain path keeps its colons and '#' (run-T10:00, a#b); a file URL is file:///ABSOLUTE/PATH,
    percent-decoded. Anything else is a StorageError that names the forms."""
    match = URL.fullmatch(url)
    if not match:
        return url
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "s3":
        return None
    if scheme != "file":
        raise StorageError(f"{url}: unknown scheme '{scheme}://'; use a local path, file:///PATH or s3://BUCKET/PREFIX")
    rest = rest.removeprefix("localhost")
    if not rest.startswith("/"):
        raise StorageError(f"{url}: a file URL names an absolute path, file:///PATH (three slashes); or pass the path itself")
    return unquote(rest)


def open_storage(url: str) -> Storage:
    """Storage for a local path, ``file:///path`` URL or ``s3://bucket/prefix``."""
    path = local_path(url)
    if path is not None:
        return LocalStorage(path)
    from novarch_batch.storage.s3 import S3Storage  # boto3 is imported only for S3 jobs

    return S3Storage.from_url(url)
