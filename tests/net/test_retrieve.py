"""C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3) against dcmtk movescu and getscu."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from ciams.net import AERegistry
from ciams.net.query import STUDY_ROOT_GET
from tests.corpus import make_instance, vendor_file, write
from tests.net.conftest import DicomNode, dcmtk

pytestmark = pytest.mark.dcmtk  # real dcmtk peers as subprocesses


@dataclass
class Study:
    patient_id: str
    study_uid: str
    series: dict[str, list[str]]  # SeriesInstanceUID -> SOP Instance UIDs
    syntax: dict[str, str]  # SOP Instance UID -> stored transfer syntax

    @property
    def sops(self) -> set[str]:
        return {s for sops in self.series.values() for s in sops}


@pytest.fixture
def study(node: DicomNode, tmp_path: Path) -> Study:
    """A study of two series stored as received: two native instances, one RLE and
    one JPEG-LS lossless (compressed by dcmtk, UIDs kept), plus another patient."""
    study_uid = generate_uid()
    series = [generate_uid(), generate_uid()]
    src = tmp_path / "src"
    files: list[Path] = []
    for n in range(4):
        ds = make_instance(
            patient_id="RPAT",
            study_uid=study_uid,
            series_uid=series[n // 2],
            series_number=n // 2 + 1,
            instance_number=n + 1,
            rows=32,
            columns=32,
        )
        files.append(write(ds, src / f"{n}.dcm"))
    for args in (
        ("dcmcrle", files[2], src / "2rle.dcm"),
        ("dcmcjpls", "+el", files[3], src / "3jls.dcm"),
    ):
        done = dcmtk(*args)
        assert done.returncode == 0, done.stderr
    files[2], files[3] = src / "2rle.dcm", src / "3jls.dcm"
    other = write(make_instance(patient_id="OTHER", rows=16, columns=16), src / "other.dcm")
    result = Study("RPAT", study_uid, {uid: [] for uid in series}, {})
    for path in [*files, other]:
        outcome = node.archive.ingest(path.read_bytes(), {"interface": "import"})
        assert outcome.ok, outcome.reason
        if path != other:
            result.series[outcome.series_instance_uid].append(outcome.sop_instance_uid)
            result.syntax[outcome.sop_instance_uid] = outcome.transfer_syntax_uid
    assert set(result.syntax.values()) == {ExplicitVRLittleEndian, RLELossless, JPEGLSLossless}
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def received(folder: Path) -> dict[str, Dataset]:
    out: dict[str, Dataset] = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID)] = ds
    return out


def stored(node: DicomNode, sop_uid: str) -> Dataset:
    (ref,) = node.archive.instances(sop_uid=sop_uid)
    return node.archive.dataset(ref)


def assert_same_content(node: DicomNode, got: dict[str, Dataset], *, as_stored: bool) -> None:
    """Received instances carry the stored content: identical data sets when sent in
    the stored transfer syntax, identical pixel values when decompressed on the way."""
    for sop, ds in got.items():
        original = stored(node, sop)
        ts = ds.file_meta.TransferSyntaxUID
        if as_stored:
            assert ts == original.file_meta.TransferSyntaxUID
            assert ds == original
            continue
        assert ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert np.array_equal(ds.pixel_array, original.pixel_array)
        skip = {"PixelData"}
        assert {e.keyword for e in ds if e.keyword not in skip} == {
            e.keyword for e in original if e.keyword not in skip
        }
        for elem in original:
            if elem.keyword not in skip:
                assert ds[elem.tag].value == elem.value, elem.keyword


def movescu(
    node: DicomNode, out: Path, port: int, model: str, *keys: str, extra: tuple[str, ...] = ()
) -> str:
    out.mkdir(parents=True, exist_ok=True)
    args: list[str] = ["movescu", "-v", model, "-aet", "MOVESCU", "+P", str(port), "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    # cwd too: with +B movescu writes to the working directory whatever -od says
    result = dcmtk(*args, *extra, "-aec", node.ae_title, "127.0.0.1", str(node.dicom_port), cwd=out)
    return result.stdout + result.stderr


def getscu(node: DicomNode, out: Path, model: str, *keys: str, extra: tuple[str, ...] = ()) -> str:
    out.mkdir(parents=True, exist_ok=True)
    args: list[str] = ["getscu", "-v", model, "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = dcmtk(*args, *extra, "-aec", node.ae_title, "127.0.0.1", str(node.dicom_port), cwd=out)
    return result.stdout + result.stderr


def dataset_bytes(part10: bytes) -> bytes:
    """The encoded data set of a Part 10 file (what follows the file meta group)."""
    meta = pydicom.dcmread(BytesIO(part10), stop_before_pixels=True).file_meta
    return part10[132 + 12 + int(meta.FileMetaInformationGroupLength) :]


def _keys(study: Study, level: str) -> tuple[str, ...]:
    series_uid = next(iter(study.series))
    if level == "PATIENT":
        return ("QueryRetrieveLevel=PATIENT", f"PatientID={study.patient_id}")
    if level == "STUDY":
        return ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_uid}")
    if level == "SERIES":
        return (
            "QueryRetrieveLevel=SERIES",
            f"StudyInstanceUID={study.study_uid}",
            f"SeriesInstanceUID={series_uid}",
        )
    sops = study.series[series_uid]
    return (
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study.study_uid}",
        f"SeriesInstanceUID={series_uid}",
        f"SOPInstanceUID={sops[1]}",
    )


def _expected(study: Study, level: str) -> set[str]:
    series_uid = next(iter(study.series))
    if level in ("PATIENT", "STUDY"):
        return study.sops
    if level == "SERIES":
        return set(study.series[series_uid])
    return {study.series[series_uid][1]}


@pytest.mark.parametrize(
    ("model", "level"),
    [("-P", "PATIENT"), ("-P", "STUDY"), ("-S", "STUDY"), ("-S", "SERIES"), ("-P", "IMAGE")],
)
def test_move_levels_send_stored_syntax(
    node: DicomNode, study: Study, tmp_path: Path, model: str, level: str
) -> None:
    port = free_port()
    AERegistry(node.archive.sessions).add("MOVESCU", "127.0.0.1", port)

    # +xa: the destination accepts every syntax, so each instance goes as stored;
    # +B: it writes what it received bit for bit.
    log = movescu(node, tmp_path / "out", port, model, *_keys(study, level), extra=("+xa", "+B"))

    got = received(tmp_path / "out")
    assert set(got) == _expected(study, level), log
    assert_same_content(node, got, as_stored=True)
    for path in (tmp_path / "out").iterdir():
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        (ref,) = node.archive.instances(sop_uid=sop)
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(node.archive.read(ref))
    assert "Received Final Move Response (Success)" in log


def test_move_decompresses_for_an_uncompressed_only_destination(
    node: DicomNode, study: Study, tmp_path: Path
) -> None:
    port = free_port()
    AERegistry(node.archive.sessions).add("MOVESCU", "127.0.0.1", port)

    log = movescu(node, tmp_path / "out", port, "-S", *_keys(study, "STUDY"))

    got = received(tmp_path / "out")
    assert set(got) == study.sops, log
    assert_same_content(node, got, as_stored=False)


def test_move_to_unknown_destination(node: DicomNode, study: Study, tmp_path: Path) -> None:
    log = movescu(
        node,
        tmp_path / "out",
        free_port(),
        "-S",
        *_keys(study, "STUDY"),
        extra=("-aem", "NOBODY", "-d"),
    )

    assert "0xa801" in log.lower(), log
    assert "move destination 'NOBODY' is not registered" in log
    assert list((tmp_path / "out").iterdir()) == []


def test_move_without_unique_key_fails(node: DicomNode, study: Study, tmp_path: Path) -> None:
    port = free_port()
    AERegistry(node.archive.sessions).add("MOVESCU", "127.0.0.1", port)

    log = movescu(
        node,
        tmp_path / "out",
        port,
        "-S",
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID=1.2.*",
        extra=("-d",),
    )

    assert "0xa900" in log.lower(), log
    assert "must not contain wildcards" in log
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(("model", "level"), [("-P", "PATIENT"), ("-S", "STUDY"), ("-S", "IMAGE")])
def test_get(node: DicomNode, study: Study, tmp_path: Path, model: str, level: str) -> None:
    log = getscu(node, tmp_path / "out", model, *_keys(study, level))

    got = received(tmp_path / "out")
    assert set(got) == _expected(study, level), log
    # getscu proposes uncompressed syntaxes only by default: compressed instances
    # arrive decompressed, native ones as stored.
    native = {s: ds for s, ds in got.items() if study.syntax[s] == ExplicitVRLittleEndian}
    compressed = {s: ds for s, ds in got.items() if s not in native}
    assert_same_content(node, native, as_stored=True)
    assert_same_content(node, compressed, as_stored=False)


def test_get_sends_stored_compressed_syntax_when_accepted(node: DicomNode, study: Study) -> None:
    """A requestor that offers RLE and native syntaxes in separate contexts (which
    getscu cannot do) receives the RLE instance as stored and the others natively."""
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(STUDY_ROOT_GET)
    for ts in (RLELossless, JPEGLSLossless, ExplicitVRLittleEndian):
        ae.add_requested_context(CTImageStorage, ts)
    got: dict[str, tuple[str, bytes]] = {}

    def on_store(event: Event) -> int:
        got[str(cast(C_STORE, event.request).AffectedSOPInstanceUID)] = (
            event.context.transfer_syntax,
            event.encoded_dataset(),
        )
        return 0x0000

    roles: list[Any] = [build_role(CTImageStorage, scp_role=True)]
    assoc = ae.associate(
        "127.0.0.1",
        node.dicom_port,
        ae_title=node.ae_title,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study.study_uid
    try:
        statuses = [int(status.Status) for status, _ in assoc.send_c_get(query, STUDY_ROOT_GET)]
    finally:
        assoc.release()

    assert statuses[-1] == 0x0000
    assert set(got) == study.sops
    for sop, (syntax, data) in got.items():
        assert syntax == study.syntax[sop]
        ds = pydicom.dcmread(BytesIO(data))
        assert ds == stored(node, sop)


def _break_one(node: DicomNode, study: Study) -> str:
    """Overwrite one stored file with junk; returns its SOP Instance UID. The second in
    sending order: a failure between good sub-operations must not upset the rest."""
    broken = node.archive.instances(study.study_uid)[1].sop_instance_uid
    (ref,) = node.archive.instances(sop_uid=broken)
    path = node.archive.storage.local_path(ref.storage_key)
    assert path is not None
    path.chmod(0o600)
    path.write_bytes(b"not dicom any more")
    return broken


def test_move_reports_failed_sub_operations(node: DicomNode, study: Study, tmp_path: Path) -> None:
    broken = _break_one(node, study)
    port = free_port()
    AERegistry(node.archive.sessions).add("MOVESCU", "127.0.0.1", port)

    log = movescu(node, tmp_path / "out", port, "-S", *_keys(study, "STUDY"), extra=("-d",))

    assert set(received(tmp_path / "out")) == study.sops - {broken}, log
    assert "DIMSE Status                  : 0xb000" in log, log
    assert "Failed Suboperations          : 1" in log
    assert f"[{broken}]" in log and "FailedSOPInstanceUIDList" in log


def test_get_reports_failed_sub_operations(node: DicomNode, study: Study, tmp_path: Path) -> None:
    broken = _break_one(node, study)

    # getscu ignores the response identifier (the Failed SOP Instance UID List), so
    # only the counts are checked here; the move test above checks the list.
    log = getscu(node, tmp_path / "out", "-S", *_keys(study, "STUDY"), extra=("-d",))

    assert set(received(tmp_path / "out")) == study.sops - {broken}, log
    assert "DIMSE Status                  : 0xb000" in log, log
    assert "Number of Failed Suboperations    : 1" in log
    assert "Number of Completed Suboperations : 3" in log


def test_get_with_bad_identifier_fails_with_a_comment(
    node: DicomNode, study: Study, tmp_path: Path
) -> None:
    log = getscu(
        node,
        tmp_path / "out",
        "-S",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study.study_uid}",
        extra=("-d",),
    )

    assert "DIMSE Status                  : 0xa900" in log, log
    assert "SeriesInstanceUID is required for a SERIES level retrieve" in log
    assert list((tmp_path / "out").iterdir()) == []

    log = getscu(
        node, tmp_path / "out2", "-S", "QueryRetrieveLevel=PATIENT", "PatientID=RPAT", extra=("-d",)
    )
    assert "DIMSE Status                  : 0xa900" in log, log
    assert "PATIENT level is not in the Study Root model" in log


def test_get_converts_big_endian_and_deflated_for_little_endian_peers(
    node: DicomNode, tmp_path: Path
) -> None:
    """getscu proposes the native syntaxes in one context per SOP class and we accept
    Explicit VR Little Endian: stored big endian and deflated instances are converted."""
    studies = []
    for name in ("MR_small_bigendian.dcm", "image_dfl.dcm"):
        outcome = node.archive.ingest(vendor_file(name).read_bytes(), {"interface": "import"})
        assert outcome.ok, outcome.reason
        studies.append(outcome.study_instance_uid)

    for n, study_uid in enumerate(studies):
        log = getscu(
            node,
            tmp_path / f"out{n}",
            "-S",
            "QueryRetrieveLevel=STUDY",
            f"StudyInstanceUID={study_uid}",
        )
        got = received(tmp_path / f"out{n}")
        assert len(got) == 1, log
        assert_same_content(node, got, as_stored=False)
