"""Storage area: where instance bytes live, behind a small interface (put/get/range/delete/verify).

Keys are content-addressed (``ab/cd/<sha256>.dcm``): identical bytes land on the same
key, so a repeated store is idempotent and a different version never overwrites
another. The index (SQL) is kept separate and never reaches into this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from ciams.errors import StorageError


def content_key(sha256_hex: str) -> str:
    """Storage key of content with this SHA-256."""
    return f"{sha256_hex[:2]}/{sha256_hex[2:4]}/{sha256_hex}.dcm"


class StorageArea(Protocol):
    """What the archive needs from a storage backend."""

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Write atomically. With ``durable`` the bytes survive a crash when this returns;
        without it they do once :meth:`sync` returns."""

    def sync(self) -> None:
        """Make every completed :meth:`put` durable (one flush for many writes)."""

    def get(self, key: str) -> bytes:
        """All bytes of a key."""

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream."""

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``."""

    def delete(self, key: str) -> None:
        """Remove a key (missing keys are ignored)."""

    def exists(self, key: str) -> bool:
        """Whether a key is present."""

    def size(self, key: str) -> int:
        """Size in bytes."""

    def keys(self) -> Iterator[str]:
        """Every stored key."""

    def verify(self, key: str, sha256_hex: str) -> bool:
        """Whether the stored bytes still hash to ``sha256_hex``."""

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for zero-copy serving, when the backend has one."""


class LocalStorage:
    """Files under one folder, written atomically (temp file, fsync, rename, fsync dir)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(exist_ok=True)
        self._known_dirs: set[Path] = set()

    def _path(self, key: str) -> Path:
        # A string check rather than Path.resolve(): this runs for every read and write.
        parts = key.split("/")
        if (
            not key
            or key.startswith("/")
            or "\\" in key
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise StorageError(
                f"invalid storage key {key!r}", hint="keys are relative paths in the storage folder"
            )
        return self.root / key

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        path = self._path(key)
        if path.exists() and path.stat().st_size == len(data):
            # Content-addressed: same key and size means the same durable bytes.
            return
        parent = path.parent
        try:
            if parent not in self._known_dirs:
                created = not parent.is_dir()
                parent.mkdir(parents=True, exist_ok=True)
                if created and durable:
                    # A new fan-out folder's entry must reach the disk too; without
                    # ``durable`` the caller's sync() covers it.
                    _fsync_dir(parent.parent)
                    _fsync_dir(parent.parent.parent)
                self._known_dirs.add(parent)
            fd, tmp = tempfile.mkstemp(dir=self._tmp, suffix=".part")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    if durable:
                        os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            if durable:
                _fsync_dir(parent)
        except OSError as exc:
            raise StorageError(f"cannot write {key}: {exc.strerror or exc}") from exc

    def sync(self) -> None:
        syncfs(self.root)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc.strerror or exc}") from exc

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc.strerror or exc}") from exc

    def get_range(self, key: str, start: int, end: int) -> bytes:
        with self.open(key) as fh:
            fh.seek(start)
            return fh.read(max(0, end - start))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def keys(self) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d != ".tmp"]
            for name in filenames:
                yield Path(dirpath, name).relative_to(self.root).as_posix()

    def verify(self, key: str, sha256_hex: str) -> bool:
        digest = hashlib.sha256()
        try:
            with self.open(key) as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        except StorageError:
            return False
        return digest.hexdigest() == sha256_hex

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


_libc: ctypes.CDLL | None = None


def syncfs(path: Path) -> None:
    """Flush every dirty page and metadata change of the filesystem holding ``path``.

    One ``syncfs(2)`` makes a whole batch of written-and-renamed files (and a SQLite WAL
    on the same filesystem) durable at the cost of one journal commit, where per-file
    ``fsync`` of file and folder costs two each. Falls back to ``sync(2)`` elsewhere.
    """
    global _libc
    fd = os.open(path, os.O_RDONLY)
    try:
        if sys.platform.startswith("linux"):
            if _libc is None:
                _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise StorageError(f"syncfs failed on {path}: {os.strerror(err)}")
        else:  # pragma: no cover - non-Linux
            os.sync()
    finally:
        os.close(fd)


def same_filesystem(a: Path, b: Path) -> bool:
    """Whether two existing paths live on one filesystem (so one syncfs covers both)."""
    return os.stat(a).st_dev == os.stat(b).st_dev


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
