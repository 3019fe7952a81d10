"""The local storage area's writes: put (durable at once) and stage/commit (durable at
the next sync), both atomic, content-addressed and leaving no temporary files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ciams.archive.storage import LocalStorage, content_key


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


def test_temporary_names_differ_between_storage_objects(tmp_path: Path) -> None:
    """A restarted server (same pid possible) must not collide with leftovers."""
    root = tmp_path / "store"
    first, second = LocalStorage(root), LocalStorage(root)
    a, b = first.stage(b"a" * 10), second.stage(b"b" * 10)
    assert a._tmp != b._tmp
    a.discard()
    b.discard()
