"""The local storage area's writes: put (durable at once) and stage/commit (durable at
the next sync), both atomic, content-addressed and leaving no temporary files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ciams.archive.storage import WRITE_PIECE, LocalStorage, content_key


def _key(data: bytes) -> str:
    return content_key(hashlib.sha256(data).hexdigest())


def test_put_writes_atomically_and_is_idempotent(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    data = b"DICM" * 1000
    key = _key(data)
    storage.put(key, data)
    storage.put(key, data)  # same key and size: nothing to do
    assert storage.get(key) == data
    assert list(storage.keys()) == [key]
    assert not list((tmp_path / "store" / ".tmp").iterdir())


def test_stage_commit_and_discard(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    kept, dropped = b"kept" * 500, b"dropped" * 500
    staged = storage.stage(bytearray(kept))
    staged.commit(_key(kept))
    storage.stage(dropped).discard()
    again = storage.stage(kept)  # already stored: the temporary copy goes away
    again.commit(_key(kept))
    storage.sync()
    assert list(storage.keys()) == [_key(kept)]
    assert storage.verify(_key(kept), hashlib.sha256(kept).hexdigest())
    assert not list((tmp_path / "store" / ".tmp").iterdir())


def test_large_files_are_written_whole_in_pieces(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    for size in (WRITE_PIECE - 1, WRITE_PIECE, 3 * WRITE_PIECE + 17):
        data = os.urandom(size)
        storage.put(_key(data), data)
        staged = memoryview(bytearray(data[::-1]))
        storage.stage(staged).commit(_key(bytes(staged)))
        storage.sync()
        assert storage.get(_key(data)) == data
        assert storage.verify(_key(bytes(staged)), hashlib.sha256(staged).hexdigest())


def test_temporary_names_differ_between_storage_objects(tmp_path: Path) -> None:
    """A restarted server (same pid possible) must not collide with leftovers."""
    root = tmp_path / "store"
    first, second = LocalStorage(root), LocalStorage(root)
    a, b = first.stage(b"a" * 10), second.stage(b"b" * 10)
    assert a._tmp != b._tmp
    a.discard()
    b.discard()


def test_leftovers_of_stopped_processes_are_removed_at_start(tmp_path: Path) -> None:
    """A crash between write and rename leaves a .part file; the next start removes it,
    but not the files of a process that still runs, nor files that are not ours."""
    import subprocess
    import sys

    root = tmp_path / "store"
    crashed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; from pathlib import Path;"
            "from ciams.archive.storage import LocalStorage;"
            "LocalStorage(Path(sys.argv[1])).stage(b'x' * 100); os._exit(9)",
            str(root),
        ],
        check=False,
    )
    assert crashed.returncode == 9
    (left,) = (root / ".tmp").glob("*.part")
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = root / ".tmp" / f"{running.pid}-abcdef12-0.part"
        busy.write_bytes(b"in flight")
        foreign = root / ".tmp" / "notes.part"
        foreign.write_bytes(b"not ours")
        storage = LocalStorage(root)
        assert storage.removed_stale == (1, 100)
        assert not left.exists()
        assert busy.exists() and foreign.exists()
    finally:
        running.kill()
        running.wait()
