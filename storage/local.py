"""A local (or mounted) folder behind the Storage interface."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from novarch_batch.storage.base import StorageError


class LocalStorage:
    """A folder on a local (or mounted) file system."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temporary name in the same folder, then rename: atomic on POSIX file systems.
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{self.url}/{key}: not found") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        folder = base if base.is_dir() else base.parent
        if not folder.is_dir():
            return []
        keys = []
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def child(self, prefix: str) -> "LocalStorage":
        return LocalStorage(self.root / prefix)

    def check_writable(self) -> None:
        """Refuse an --out we cannot create or write, without leaving anything behind."""
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise StorageError(f"--out {self.url}: {probe} is a file, not a folder; choose another --out")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise StorageError(f"--out {self.url}: {probe} is not writable; choose a folder you can write to")
