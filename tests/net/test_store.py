"""Verification and Storage SCP (PS3.4 Annexes A and B) against dcmtk echoscu/storescu."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config
from pynetdicom.dsutils import encode_file_meta

from tests.corpus import make_instance, make_series, vendor_file, write
from tests.net.conftest import DicomNode, dcmtk

pytestmark = pytest.mark.dcmtk  # real dcmtk peers as subprocesses

# One bundled vendor file per transfer syntax (pydicom's test data, no download).
VENDOR_BY_SYNTAX = {
    ImplicitVRLittleEndian: "MR_small_implicit.dcm",
    ExplicitVRBigEndian: "MR_small_bigendian.dcm",
    DeflatedExplicitVRLittleEndian: "image_dfl.dcm",
    JPEGBaseline8Bit: "SC_rgb_jpeg_dcmtk.dcm",
    JPEGExtended12Bit: "JPEG-lossy.dcm",
    JPEGLosslessSV1: "SC_rgb_jpeg_gdcm.dcm",
    JPEGLSLossless: "MR_small_jpeg_ls_lossless.dcm",
    JPEG2000Lossless: "MR_small_jp2klossless.dcm",
    JPEG2000: "JPEG2000.dcm",
    RLELossless: "SC_rgb_rle.dcm",
}


def read(data: bytes | Path) -> Dataset:
    source = BytesIO(data) if isinstance(data, bytes) else data
    return pydicom.dcmread(source)


def echo(node: DicomNode, *extra: str) -> subprocess.CompletedProcess[str]:
    return dcmtk("echoscu", "-v", *extra, "-aec", node.ae_title, "127.0.0.1", str(node.dicom_port))


def storescu(
    node: DicomNode, *files: Path, opts: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return dcmtk(
        "storescu", "-v", *opts, "-aec", node.ae_title, "127.0.0.1", str(node.dicom_port), *files
    )


def stored(node: DicomNode, sop_uid: str) -> tuple[str, bytes]:
    """(transfer syntax, bytes) of the stored instance."""
    (ref,) = [r for r in node.archive.instances() if r.sop_instance_uid == sop_uid]
    return ref.transfer_syntax_uid, node.archive.read(ref)


def test_echo(node: DicomNode) -> None:
    result = echo(node)
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_store_generated_ct_series(node: DicomNode, tmp_path: Path) -> None:
    series = list(make_series(8, rows=128, columns=128))
    files = [write(ds, tmp_path / f"{n}.dcm") for n, ds in enumerate(series)]

    result = storescu(node, *files)

    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count("Received Store Response (Success)") == 8
    assert node.archive.counts()["instances"] == 8
    for path, ds in zip(files, series, strict=True):
        syntax, data = stored(node, ds.SOPInstanceUID)
        assert syntax == ExplicitVRLittleEndian
        assert read(data) == read(path)
    assert list(node.archive.quarantine.entries()) == []


def _dcmtk_encoded(tmp_path: Path) -> dict[str, Path]:
    """Files dcmtk itself compresses, for syntaxes pydicom's bundle lacks."""
    ct = write(make_instance(rows=64, columns=64), tmp_path / "src" / "ct.dcm")
    out: dict[str, Path] = {
        JPEGLossless: tmp_path / "p14.dcm",
        JPEGLSNearLossless: tmp_path / "jls-near.dcm",
    }
    for args in (
        ("dcmcjpeg", "+el", "+sv", "2", ct, out[JPEGLossless]),
        ("dcmcjpls", "+en", ct, out[JPEGLSNearLossless]),
    ):
        done = dcmtk(*args)
        assert done.returncode == 0, done.stderr
    return out


def _fresh_uids(path: Path, target: Path) -> Path:
    """A copy with new study/series/instance UIDs (several bundled files are variants
    of one image sharing its UIDs); dcmodify keeps the transfer syntax."""
    target.write_bytes(path.read_bytes())
    done = dcmtk("dcmodify", "-nb", "-gst", "-gse", "-gin", target)
    assert done.returncode == 0, done.stderr
    return target


def _storescu_config(files: list[Path], target: Path) -> Path:
    """A storescu association profile proposing each file's own (SOP class, transfer
    syntax), so storescu sends every file as it is instead of converting it."""
    pairs = sorted(
        {(str(read(f).SOPClassUID), str(read(f).file_meta.TransferSyntaxUID)) for f in files}
    )
    lines = ["[[TransferSyntaxes]]"]
    for n, (_, ts) in enumerate(pairs, 1):
        lines += [f"[TS{n}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for n, (sop, _) in enumerate(pairs, 1):
        lines.append(f"PresentationContext{n} = {sop}\\TS{n}")
    lines += ["[[Profiles]]", "[Default]", "PresentationContexts = Contexts"]
    target.write_text("\n".join(lines) + "\n")
    return target


def test_store_keeps_every_transfer_syntax(node: DicomNode, tmp_path: Path) -> None:
    files: dict[str, Path] = {
        ts: _fresh_uids(vendor_file(name), tmp_path / name) for ts, name in VENDOR_BY_SYNTAX.items()
    }
    files.update(_dcmtk_encoded(tmp_path))

    config = _storescu_config(list(files.values()), tmp_path / "storescu.cfg")

    result = storescu(node, *files.values(), opts=("-xf", str(config), "Default"))

    assert result.returncode == 0, result.stdout + result.stderr
    for ts, path in files.items():
        sent = read(path)
        syntax, data = stored(node, sent.SOPInstanceUID)
        assert syntax == ts, path.name
        received = read(data)
        assert received.file_meta.TransferSyntaxUID == ts
        assert received == sent, path.name
    assert list(node.archive.quarantine.entries()) == []


def test_bad_input_is_refused_quarantined_and_server_keeps_serving(
    node: DicomNode, tmp_path: Path
) -> None:
    truncated = make_instance()
    truncated.PixelData = truncated.PixelData[:100]
    no_study = make_instance()
    del no_study.StudyInstanceUID
    bad = [write(truncated, tmp_path / "truncated.dcm"), write(no_study, tmp_path / "nostudy.dcm")]

    result = storescu(node, *bad, opts=("-d", "--no-halt"))

    output = result.stdout + result.stderr
    assert output.count("DIMSE Status                  : 0xc000") == 2, output
    assert "truncated pixel data: 100 bytes" in output  # the Error Comment (0000,0902)
    assert "missing StudyInstanceUID" in output
    reasons = sorted(e.reason for e in node.archive.quarantine.entries())
    assert len(reasons) == 2
    assert reasons[0] == "missing StudyInstanceUID"
    assert reasons[1].startswith("truncated pixel data")
    assert {e.source["interface"] for e in node.archive.quarantine.entries()} == {"dimse"}
    assert node.archive.counts()["instances"] == 0
    assert echo(node).returncode == 0


def test_garbage_data_set_is_refused(
    node: DicomNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data set that is not DICOM at all (dcmtk will not send one, so pynetdicom's
    SCU sends the bytes after a valid file meta header as they are)."""
    meta = make_instance().file_meta
    garbage = b"\x08\x00\x20\x00DA\xff\x7f" + os.urandom(256)  # a date 32767 bytes long
    path = tmp_path / "garbage.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + encode_file_meta(meta) + garbage)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
    finally:
        assoc.release()

    assert rsp.Status == 0xC000
    assert rsp.ErrorComment
    (entry,) = node.archive.quarantine.entries()
    assert entry.code == "invalid-instance"
    assert node.archive.quarantine.data(entry.id).endswith(garbage)
    assert echo(node).returncode == 0


def test_conflict_answers_warning_and_quarantines_new_bytes(
    node: DicomNode, tmp_path: Path
) -> None:
    first = make_instance()
    second = make_instance()
    second.SOPInstanceUID = first.SOPInstanceUID
    second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    second.StudyInstanceUID = first.StudyInstanceUID
    second.SeriesInstanceUID = first.SeriesInstanceUID
    second.PatientName = "Other^Name"
    paths = [write(first, tmp_path / "a.dcm"), write(second, tmp_path / "b.dcm")]

    assert storescu(node, paths[0]).returncode == 0
    _, kept_before = stored(node, first.SOPInstanceUID)
    result = storescu(node, paths[1], opts=("-d",))

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "DIMSE Status                  : 0xb000" in output
    assert "conflict" in output  # Error Comment
    _, kept = stored(node, first.SOPInstanceUID)
    assert kept == kept_before
    (entry,) = node.archive.quarantine.entries()
    assert entry.code == "conflict"
    assert entry.sop_instance_uid == first.SOPInstanceUID
    new_bytes = node.archive.quarantine.data(entry.id)
    assert read(new_bytes).PatientName == "Other^Name"
    assert hashlib.sha256(new_bytes).digest() != hashlib.sha256(kept).digest()


def test_calling_ae_allow_list(make_node: Callable[..., DicomNode]) -> None:
    node = make_node(dicom={"allowed_calling_aes": ["GOODSCU"]})

    refused = echo(node, "-aet", "BADSCU")
    accepted = echo(node, "-aet", "GOODSCU")

    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "Association Rejected" in output
    assert "Calling AE Title Not Recognized" in output
    assert accepted.returncode == 0, accepted.stderr


def test_concurrent_associations(node: DicomNode, tmp_path: Path) -> None:
    batches = []
    for n in range(3):
        series = list(make_series(6, rows=64, columns=64, patient_id=f"P{n}"))
        batches.append([write(ds, tmp_path / str(n) / f"{i}.dcm") for i, ds in enumerate(series)])
    env = dict(os.environ, TCP_NODELAY="1")
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", node.ae_title, "127.0.0.1", str(node.dicom_port), *map(str, b)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for b in batches
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out

    assert node.archive.counts()["instances"] == 18
    assert node.archive.counts()["patients"] == 3


def test_accepted_sockets_have_nodelay(node: DicomNode) -> None:
    """Nagle's algorithm is off on the server side of every association."""
    ae = AE(ae_title="PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        server = node.dicom._server
        assert server is not None
        (accepted,) = server.active_associations
        assert accepted.dul.socket is not None
        sock = accepted.dul.socket.socket
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()
