"""A local (or mounted) folder behind the Storage interface."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path

from novarch_batch.storage.base import StorageError


def _file_mode() -> int:
    """The mode open() would give a new file under this process's umask (0644 under the usual 022):
    mkstemp's private 0600 would make a dataset unreadable to every other user, container or job.
    Linux reports the umask in /proc without changing it; elsewhere it is read by setting it back."""
    try:
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("Umask:"))
        mask = int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


class LocalStorage:
    """A folder on a local (or mounted) file system."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def _complete_file(self, key: str, data: bytes):
        """A complete temporary file in the key's folder, removed afterwards unless it was renamed."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with contextlib.suppress(OSError):  # best effort: some mounts (vfat, some FUSE) refuse chmod
                os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            yield tmp, path
        finally:
            Path(tmp).unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._complete_file(key, data) as (tmp, path):
            os.replace(tmp, path)  # rename within one folder: atomic on POSIX file systems

    def create(self, key: str, data: bytes) -> str | None:
        """Write only if the key does not exist: a hard link of a complete temporary file is atomic and
        fails when the name exists, so exactly one of concurrent creators wins. Returns the version
        (the content's sha256), or None when the key exists."""
        with self._complete_file(key, data) as (tmp, path):
            try:
                os.link(tmp, path)
            except FileExistsError:
                return None
        return hashlib.sha256(data).hexdigest()

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def replace(self, key: str, data: bytes, version: str) -> str | None:
        """Compare-and-swap under an advisory lock beside the key: write only if the content is still at `version`."""
        with self._locked(key):
            current = self.read_versioned(key)
            if current is None or current[1] != version:
                return None
            self.put_bytes(key, data)
            return hashlib.sha256(data).hexdigest()

    def delete_version(self, key: str, version: str) -> bool:
        with self._locked(key):
            current = self.read_versioned(key)
            if current is None or current[1] != version:
                return False
            self.delete(key)
            return True

    def honours_conditional_writes(self) -> bool:
        return True  # create() and replace() above are atomic on a local file system

    @contextlib.contextmanager
    def _locked(self, key: str):
        """An advisory lock on the key's folder (flock works on a directory's descriptor), so no lock
        file is left in the job folder."""
        folder = self._path(key).parent
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

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

    def fail_fast(self) -> "LocalStorage":
        return self  # a local file operation neither retries nor backs off

    def prune(self) -> None:
        """Remove this folder if nothing is in it (what a refused new job leaves after its lease)."""
        with contextlib.suppress(OSError):
            self.root.rmdir()

    def check_readable(self) -> None:
        """Nothing to check ahead for a folder: a missing one reads as empty."""

    def check_writable(self) -> None:
        """Refuse an --out we cannot create or write, without leaving anything behind."""
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise StorageError(f"--out {self.url}: {probe} is a file, not a folder; choose another --out")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise StorageError(f"--out {self.url}: {probe} is not writable; choose a folder you can write to")
        # Permissions do not say everything (root passes os.access where /proc or a read-only mount
        # refuses): a folder of a name no other driver uses is made in it and removed again.
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".novarch-probe-", dir=probe))
        except OSError as e:
            raise StorageError(f"--out {self.url}: cannot create a folder in {probe} ({e.strerror}); choose a folder you can write to") from None
