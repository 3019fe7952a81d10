"""Ingest: durable storage, idempotence, conflicts, versions and quarantine."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from ciams.archive import Archive, content_key
from ciams.config import Settings
from tests.corpus import make_instance, to_bytes, vendor_file, vendor_files


def test_store_records_hash_and_index(archive: Archive) -> None:
    data = to_bytes(make_instance())
    result = archive.ingest(data, {"interface": "test", "calling_ae": "SCU"})
    assert result.status == "stored" and result.ok
    (ref,) = archive.instances(result.study_instance_uid)
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.storage_key == content_key(ref.sha256)
    assert archive.read(ref) == data
    assert archive.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    assert not list((archive.settings.storage_dir / ".tmp").iterdir())


def test_identical_bytes_are_idempotent(archive: Archive) -> None:
    data = to_bytes(make_instance())
    assert archive.ingest(data).status == "stored"
    again = archive.ingest(data)
    assert again.status == "duplicate" and again.ok
    assert archive.counts()["instances"] == 1
    assert not list(archive.quarantine.entries())


def _changed(data: bytes) -> bytes:
    ds = pydicom.dcmread(__import__("io").BytesIO(data))
    ds.StudyDescription = "CHANGED"
    return to_bytes(ds)


def test_conflict_rejected_by_default(archive: Archive) -> None:
    data = to_bytes(make_instance())
    first = archive.ingest(data)
    other = _changed(data)
    result = archive.ingest(other)
    assert result.status == "conflict" and not result.ok
    assert result.error is not None and result.error.http_status == 409
    (ref,) = archive.instances(first.study_instance_uid)
    assert archive.read(ref) == data  # never silently overwritten
    (entry,) = list(archive.quarantine.entries())
    assert entry.code == "conflict"
    assert archive.quarantine.data(entry.id) == other
    # the rejected bytes are not left behind in storage
    assert not archive.storage.exists(content_key(hashlib.sha256(other).hexdigest()))


def test_conflict_versioned_keeps_both(make_settings: Callable[..., Settings]) -> None:
    with Archive(make_settings(archive={"on_conflict": "version"})) as archive:
        data = to_bytes(make_instance())
        archive.ingest(data)
        other = _changed(data)
        result = archive.ingest(other)
        assert result.status == "versioned"
        (ref,) = archive.instances(result.study_instance_uid)
        assert archive.read(ref) == other
        old_key = content_key(hashlib.sha256(data).hexdigest())
        assert archive.storage.get(old_key) == data
        assert archive.fsck().ok


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"this is not dicom" * 20, "not a DICOM"),
        (b"", "only 0 bytes"),
    ],
)
def test_non_dicom_is_quarantined(archive: Archive, payload: bytes, reason: str) -> None:
    result = archive.ingest(payload, {"interface": "test"})
    assert result.status == "rejected"
    assert reason in result.reason
    (entry,) = list(archive.quarantine.entries())
    assert archive.quarantine.data(entry.id) == payload
    meta = json.loads((archive.settings.quarantine_dir / f"{entry.id}.json").read_text())
    assert reason in meta["reason"] and meta["source"]["interface"] == "test"
    assert archive.counts()["instances"] == 0


def test_truncated_file_is_quarantined(archive: Archive) -> None:
    data = to_bytes(make_instance())
    result = archive.ingest(data[: len(data) - 500])
    assert result.status == "rejected"
    assert "truncated" in result.reason
    assert archive.counts()["instances"] == 0


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid_is_quarantined(archive: Archive, missing: str) -> None:
    ds = make_instance()
    delattr(ds, missing)
    result = archive.ingest(to_bytes(ds))
    assert result.status == "rejected"
    assert f"missing {missing}" in result.reason


def test_absurd_element_length_is_quarantined(archive: Archive) -> None:
    data = bytearray(to_bytes(make_instance()))
    # Patient's Name (0010,0010) explicit VR 'PN': make its 16-bit length huge.
    pos = data.find(b"\x10\x00\x10\x00PN")
    assert pos > 0
    data[pos + 6 : pos + 8] = b"\xff\xfe"
    result = archive.ingest(bytes(data))
    assert result.status == "rejected"
    assert archive.counts()["instances"] == 0
    assert len(list(archive.quarantine.entries())) == 1


def test_vendor_files_keep_their_transfer_syntax(archive: Archive) -> None:
    files = vendor_files()
    assert len(files) >= 20
    syntaxes = set()
    seen: set[str] = set()
    for path in files:
        data = path.read_bytes()
        result = archive.ingest(data)
        if result.sop_instance_uid in seen:
            # pydicom ships one image in several encodings under the same SOP UID
            assert result.status in ("conflict", "duplicate"), (path.name, result.status)
            continue
        seen.add(result.sop_instance_uid)
        assert result.ok, (path.name, result.reason)
        (ref,) = archive.instances(sop_uid=result.sop_instance_uid)
        assert archive.read(ref) == data  # stored as received
        syntaxes.add(ref.transfer_syntax_uid)
    # implicit, explicit LE/BE, deflated, JPEG baseline/lossless, JPEG-LS, J2K, RLE
    assert len(syntaxes) >= 8, syntaxes


def test_fsck_detects_missing_corrupt_and_orphan(archive: Archive) -> None:
    a = archive.ingest(to_bytes(make_instance(patient_id="A")))
    b = archive.ingest(to_bytes(make_instance(patient_id="B")))
    assert archive.fsck().ok
    (ref_a,) = archive.instances(a.study_instance_uid)
    (ref_b,) = archive.instances(b.study_instance_uid)
    path_a = archive.storage.local_path(ref_a.storage_key)
    path_b = archive.storage.local_path(ref_b.storage_key)
    assert path_a is not None and path_b is not None
    path_a.unlink()
    raw = bytearray(path_b.read_bytes())
    raw[-1] ^= 0xFF
    path_b.write_bytes(bytes(raw))
    orphan = archive.settings.storage_dir / "00" / "00" / "stray.dcm"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x")
    report = archive.fsck()
    assert report.missing == [ref_a.storage_key]
    assert report.corrupt == [ref_b.storage_key]
    assert report.orphans == ["00/00/stray.dcm"]
    assert not report.ok


def test_concurrent_ingest_group_commits(archive: Archive) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.corpus import make_series

    blobs = [to_bytes(ds) for ds in make_series(40, rows=16, columns=16)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(archive.ingest, blobs))
    assert all(r.status == "stored" for r in results), [
        (r.status, r.reason) for r in results if r.status != "stored"
    ]
    assert archive.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 40}


def test_export_writes_verified_copies(archive: Archive, tmp_path: Path) -> None:
    data = vendor_file("CT_small.dcm").read_bytes()
    result = archive.ingest(data)
    files = archive.export(result.study_instance_uid, tmp_path / "out")
    assert [f.read_bytes() for f in files] == [data]


def test_recovery_drops_rows_whose_file_was_lost(settings: Settings) -> None:
    """After an unclean stop, rows without a durable file (never acknowledged) are dropped."""
    archive = Archive(settings)
    kept = archive.ingest(to_bytes(make_instance(patient_id="KEEP")))
    lost = archive.ingest(to_bytes(make_instance(patient_id="LOST")))
    (ref,) = archive.instances(sop_uid=lost.sop_instance_uid)
    archive._writer.close()  # simulate a crash: no clean close, the run marker stays
    archive.engine.dispose()
    marker = next((settings.data_dir / "run").glob("*.json"))
    dead = marker.with_name("999999999.json")  # a pid that does not run
    marker.rename(dead)
    path = archive.storage.local_path(ref.storage_key)
    assert path is not None
    path.unlink()  # the file had not reached the disk when the machine went down
    with Archive(settings) as again:
        assert again.instances(sop_uid=lost.sop_instance_uid) == []
        assert len(again.instances(sop_uid=kept.sop_instance_uid)) == 1
        assert again.fsck().ok
        assert not dead.exists()


def test_live_process_marker_is_left_alone(settings: Settings) -> None:
    with Archive(settings) as first:
        stored = first.ingest(to_bytes(make_instance()))
        with Archive(settings) as second:  # e.g. `ciams ls` while the server runs
            assert len(second.instances(sop_uid=stored.sop_instance_uid)) == 1
        assert len(list((settings.data_dir / "run").glob("*.json"))) == 1


@pytest.mark.parametrize("key", ["../outside.dcm", "/etc/passwd", "a//b", "a/./b", ""])
def test_storage_refuses_keys_outside_its_folder(archive: Archive, key: str) -> None:
    from ciams.errors import StorageError

    with pytest.raises(StorageError, match="invalid storage key"):
        archive.storage.get(key)
