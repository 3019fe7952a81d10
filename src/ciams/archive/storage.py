"""Storage area: where instance bytes live, behind a small interface (put/get/range/delete/verify).

Keys are content-addressed (``ab/cd/<sha256>.dcm``): identical bytes land on the same
key, so a repeated store is idempotent and a different version never overwrites
another. The index (SQL) is kept separate and never reaches into this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import itertools
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from ciams.errors import StorageError

log = logging.getLogger(__name__)


def content_key(sha256_hex: str) -> str:
    """Storage key of content with this SHA-256."""
    return f"{sha256_hex[:2]}/{sha256_hex[2:4]}/{sha256_hex}.dcm"


class Staged(Protocol):
    """Bytes handed to a storage area before their key is known."""

    def commit(self, key: str) -> None:
        """Put the bytes under ``key`` (like ``put(key, data, durable=False)``)."""

    def discard(self) -> None:
        """Drop the bytes."""


class StorageArea(Protocol):
    """What the archive needs from a storage backend."""

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Write atomically. With ``durable`` the bytes survive a crash when this returns;
        without it they do once :meth:`sync` returns."""

    def stage(self, data: bytes | bytearray | memoryview) -> Staged:
        """Start writing bytes whose key is not known yet (content-addressed keys need
        the hash, and the disk can work while the caller parses); not durable until
        :meth:`sync` after ``commit``."""

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
        # Temporary names: unique per process and storage object (a restarted server may
        # get a crashed one's pid, and its .part files may still be there).
        self._prefix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._counter = itertools.count()
        self.removed_stale = self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> tuple[int, int]:
        """Delete ``.part`` files left by processes that are gone (a crash between write
        and rename); returns (files, bytes). Their instances were never acknowledged.
        A live process's files stay, so servers sharing the folder on this host can
        start at any time; a pid reused by an unrelated process only delays the cleanup.
        """
        files = size = 0
        for part in self._tmp.glob("*.part"):
            try:
                pid = int(part.name.split("-", 1)[0])
            except ValueError:
                continue  # not a name of ours
            if pid == os.getpid() or process_alive(pid):
                continue
            try:
                size += part.stat().st_size
                part.unlink()
                files += 1
            except FileNotFoundError:
                continue  # another process starting at the same time removed it
            except OSError as exc:
                raise StorageError(f"cannot remove stale {part}: {exc.strerror or exc}") from exc
        if files:
            log.warning(
                "removed %d temporary files (%d bytes) left in %s by stopped processes",
                files,
                size,
                self._tmp,
            )
        return files, size

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
        if self._present(path, len(data)):
            return
        self._install(self._write_temp(data, durable=durable), path, durable=durable)

    def stage(self, data: bytes | bytearray | memoryview) -> LocalStaged:
        return LocalStaged(self, self._write_temp(data, durable=False), len(data))

    def _present(self, path: Path, size: int) -> bool:
        """Whether ``path`` already holds content of this size (content-addressed keys:
        same key and size means the same durable bytes)."""
        try:
            return os.stat(path).st_size == size
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot write {path.name}: {exc.strerror or exc}") from exc

    def _write_temp(self, data: bytes | bytearray | memoryview, *, durable: bool) -> Path:
        # A prefix and a counter make the name unique across processes and threads
        # without mkstemp's random names and retries; O_EXCL still guards.
        tmp = self._tmp / f"{self._prefix}-{next(self._counter)}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, data)
                if durable:
                    os.fsync(fd)
                else:
                    start_writeback(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write to {self._tmp}: {exc.strerror or exc}") from exc
        return tmp

    def _install(self, tmp: Path, path: Path, *, durable: bool) -> None:
        """Rename a written temporary file to its key (atomic)."""
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
            os.replace(tmp, path)
            if durable:
                _fsync_dir(parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(
                f"cannot write {path.relative_to(self.root)}: {exc.strerror or exc}"
            ) from exc

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


class LocalStaged:
    """Bytes written to a temporary file of a :class:`LocalStorage`, not yet under a key."""

    def __init__(self, storage: LocalStorage, tmp: Path, size: int) -> None:
        self._storage, self._tmp, self._size = storage, tmp, size

    def commit(self, key: str) -> None:
        path = self._storage._path(key)
        if self._storage._present(path, self._size):
            self.discard()
            return
        self._storage._install(self._tmp, path, durable=False)

    def discard(self) -> None:
        self._tmp.unlink(missing_ok=True)


_libc: ctypes.CDLL | None = None
# sync_file_range(2) flag: start writing the range's dirty pages, do not wait.
_SYNC_FILE_RANGE_WRITE = 2


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (any owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# Files are written in pieces of this size, not in one write(2). The kernel sizes
# page-cache folios by the write, and one 0.5 MB write of an instance got large folios
# whose first touch cost several times the copy on our (virtualised) test machine:
# 4 parallel C-STORE associations used 4.7-5.0 ms of server CPU per instance with one
# write against 3.2-3.3 ms with 64 KiB pieces (and 292 against 412 instances/s).
# Orthanc writes 4 KiB pieces. Measured in bench/README.md, "Parallel senders".
WRITE_PIECE = 64 * 1024


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:WRITE_PIECE]) :]


def _c_library() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to disk without waiting (Linux), so that
    the sync that acknowledges it finds less to do; elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        _c_library().sync_file_range(
            fd, ctypes.c_int64(0), ctypes.c_int64(0), _SYNC_FILE_RANGE_WRITE
        )


def syncfs(path: Path) -> None:
    """Flush every dirty page and metadata change of the filesystem holding ``path``.

    One ``syncfs(2)`` makes a whole batch of written-and-renamed files (and a SQLite WAL
    on the same filesystem) durable at the cost of one journal commit, where per-file
    ``fsync`` of file and folder costs two each. Falls back to ``sync(2)`` elsewhere.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        if sys.platform.startswith("linux"):
            if _c_library().syncfs(fd) != 0:
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
