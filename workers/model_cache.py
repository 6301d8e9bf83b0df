"""``--model s3://…``: download a diffusers-format folder once per node and check its weights.

Every actor on a node calls ``fetch_model_folder``; a file lock makes one of them download
while the others wait, and the folder appears under its final name only when complete
(atomic rename), so nobody ever loads a half-downloaded model.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath

from novarch_batch.storage import StorageError, join, local_path, open_storage, sha256_file
from novarch_batch.workers.model import default_model_dir
from novarch_batch.workers.spec import SHIPPED_MODELS

WEIGHTS = "diffusion_pytorch_model.safetensors"
SHA_FILE = ".novarch-weights.sha256"  # sha256 of WEIGHTS, written when the download completes


class ModelIntegrityError(StorageError):
    """The model's weights do not have the sha256 they should."""


def default_cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "novarch-batch" / "models"


def fetch_model_folder(url: str, cache_root: Path | None = None, expected_sha256: str | None = None) -> Path:
    """Local folder holding the model at ``url``: a shipped model by name, local paths as given,
    ``s3://`` via the node cache."""
    if url in SHIPPED_MODELS:
        url = str(default_model_dir(url))
    path = local_path(url)
    if path is not None:
        folder = Path(path)
        if expected_sha256:
            _check(sha256_file(folder / WEIGHTS), expected_sha256, str(folder / WEIGHTS))
        return folder

    root = Path(cache_root) if cache_root is not None else default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(url.encode()).hexdigest()[:32]
    target = root / name
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if we crash
        if (target / SHA_FILE).is_file():
            cached = (target / SHA_FILE).read_text().strip()
            if not expected_sha256 or cached == expected_sha256.lower():
                return target
            # The cache holds another version (the remote folder was replaced): fetch again,
            # and swap only if the new download has the expected weights.
        staging = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        try:
            sha = _download(open_storage(url), staging)
            if expected_sha256:
                _check(sha, expected_sha256, join(url, WEIGHTS))
            (staging / SHA_FILE).write_text(sha + "\n")
            if target.is_dir():
                old = root / f".old-{name}-{uuid.uuid4().hex[:8]}"
                os.rename(target, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(staging, target)  # the folder appears complete or not at all
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _download(store, staging: Path) -> str:
    """Copy every object under the prefix into ``staging``; return the weights' sha256."""
    keys = store.list()
    if WEIGHTS not in keys:
        raise StorageError(
            f"--model {store.url}: no {WEIGHTS} there; point --model at a diffusers-format folder "
            "(config.json + diffusion_pytorch_model.safetensors + scheduler_config.json)"
        )
    weights_sha = ""
    for key in keys:
        rel = PurePosixPath(key)
        if rel.is_absolute() or ".." in rel.parts:
            raise StorageError(f"--model {store.url}: refusing object key '{key}' that leaves the folder")
        path = staging.joinpath(*rel.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        received = store.get_to_file(key, path)
        if key == WEIGHTS:
            # Re-read what landed on disk: catches a short or corrupted write, not just transfer.
            on_disk = sha256_file(path)
            if on_disk != received:
                raise ModelIntegrityError(
                    f"{join(store.url, key)}: file on disk (sha256 {on_disk[:12]}…) differs from the object "
                    f"received (sha256 {received[:12]}…); check the disk under {staging.parent} and retry"
                )
            weights_sha = received
    return weights_sha


def _check(actual: str, expected: str, where: str) -> None:
    if actual != expected.lower():
        raise ModelIntegrityError(
            f"{where}: sha256 is {actual}, expected {expected}; the model changed or the expected sha256 is wrong"
        )
