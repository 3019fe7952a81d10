"""Synthetic corpora for the archive benchmark, generated once under bench/work/.

* The CT corpus: ``n`` CT Image Storage instances, 512x512, 16 bits allocated / 12 stored,
  Explicit VR Little Endian, realistic headers (several patients, studies and series),
  pixel data = a phantom plus per-slice noise, so nothing compresses it away. Files are
  spread over four folders ``q0..q3`` (one per parallel storescu).
* The index corpus: ``rows`` tiny pixel-less CT instances for ~``rows/100`` patients (one
  study of two series each), so that a search by Patient ID returns one study. Orthanc
  receives them as files (there is no other way to fill its index); CIAMS's index rows
  are generated from the same values directly through its SQLAlchemy models.

Everything is deterministic (same UIDs on every run), so a corpus is reused when its
folder is complete.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

WORK = Path(__file__).resolve().parent / "work"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root: synthetic, no real patient
SERIES_PER_STUDY = 2
INSTANCES_PER_STUDY = 250  # CT corpus
INDEX_INSTANCES_PER_PATIENT = 100  # index corpus: 1 study x 2 series x 50


def uid(*parts: object) -> str:
    """A deterministic valid UID from the given parts."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return UID_ROOT + str(int.from_bytes(digest[:16], "big"))[:30]


def _meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _encode(ds: Dataset) -> bytes:
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


# -- CT corpus ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CtCorpus:
    root: Path
    files: list[Path]
    total_bytes: int
    studies: dict[str, int]  # StudyInstanceUID -> number of instances
    study_bytes: dict[str, int]

    def quarters(self) -> list[Path]:
        return [self.root / f"q{i}" for i in range(4)]

    def largest_study(self) -> str:
        return max(self.studies, key=lambda s: (self.studies[s], s))


def _phantom(size: int = 512) -> np.ndarray:
    """A body-like phantom in CT numbers + 1024 (12-bit range)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    r = np.hypot(x - c, (y - c) * 1.3)
    img = np.zeros((size, size), np.float32)
    img[r < size * 0.42] = 1024 + 40  # soft tissue
    img[np.hypot(x - c * 0.7, y - c) < size * 0.08] = 1024 - 800  # lung-ish
    img[np.hypot(x - c * 1.3, y - c) < size * 0.08] = 1024 - 800
    img[np.hypot(x - c, y - c * 1.5) < size * 0.05] = 1024 + 900  # spine
    return img


def ct_layout(n: int) -> list[dict[str, Any]]:
    """One header dict per instance: studies of ~250 instances, two series each,
    two studies per patient."""
    n_studies = max(2, -(-n // INSTANCES_PER_STUDY))
    per_study = [n // n_studies + (1 if i < n % n_studies else 0) for i in range(n_studies)]
    out: list[dict[str, Any]] = []
    for s, count in enumerate(per_study):
        p = s // 2
        study_uid = uid("ct", "study", s)
        for k in range(count):
            se = k * SERIES_PER_STUDY // count
            out.append(
                {
                    "patient": p,
                    "PatientID": f"CTPAT{p:04d}",
                    "PatientName": f"SYNTH^CT{p:04d}",
                    "PatientBirthDate": f"19{50 + p % 40:02d}0{1 + p % 9}15",
                    "PatientSex": "MF"[p % 2],
                    "StudyInstanceUID": study_uid,
                    "StudyDate": f"2025{1 + s % 12:02d}{10 + s % 18:02d}",
                    "StudyTime": f"{8 + s % 10:02d}3015",
                    "AccessionNumber": f"CTACC{s:05d}",
                    "StudyID": str(s + 1),
                    "StudyDescription": "CT CHEST ABDOMEN PELVIS W CONTRAST",
                    "SeriesInstanceUID": uid("ct", "series", s, se),
                    "SeriesNumber": se + 1,
                    "SeriesDescription": ["Topogram", "Axial 1.0 B30f", "Axial 3.0 B70f"][se % 3],
                    "SOPInstanceUID": uid("ct", "instance", s, k),
                    "InstanceNumber": k + 1,
                    "z": -k * 1.0,
                }
            )
    return out


def _ct_dataset(h: dict[str, Any], pixels: bytes) -> Dataset:
    ds = Dataset()
    ds.file_meta = _meta(h["SOPInstanceUID"])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = h["SOPInstanceUID"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = h["StudyDate"]
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = h["StudyTime"]
    ds.AccessionNumber = h["AccessionNumber"]
    ds.Modality = "CT"
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = "CIAMS BENCH SITE 01"
    ds.ReferringPhysicianName = "REFERRING^DOCTOR"
    ds.StudyDescription = h["StudyDescription"]
    ds.SeriesDescription = h["SeriesDescription"]
    ds.ManufacturerModelName = "BENCH-CT"
    ds.PatientName = h["PatientName"]
    ds.PatientID = h["PatientID"]
    ds.PatientBirthDate = h["PatientBirthDate"]
    ds.PatientSex = h["PatientSex"]
    ds.PatientAge = "065Y"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = "360"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "200"
    ds.ConvolutionKernel = "B30f"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = h["StudyInstanceUID"]
    ds.SeriesInstanceUID = h["SeriesInstanceUID"]
    ds.StudyID = h["StudyID"]
    ds.SeriesNumber = h["SeriesNumber"]
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = h["InstanceNumber"]
    ds.ImagePositionPatient = ["-180.0", "-180.0", f"{h['z']:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uid("ct", "for", h["StudyInstanceUID"])
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{h['z']:.1f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 512
    ds.Columns = 512
    ds.PixelSpacing = ["0.703125", "0.703125"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = pixels
    return ds


def ct_corpus(n: int, root: Path | None = None, *, log: Any = print) -> CtCorpus:
    """Generate (or reuse) the CT corpus of ``n`` instances."""
    root = root or WORK / f"ct-{n}"
    manifest = root / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        files = [root / f for f in m["files"]]
        if all(f.exists() for f in files):
            return CtCorpus(root, files, m["total_bytes"], m["studies"], m["study_bytes"])
    log(f"generating CT corpus: {n} instances of 512x512x16 bits into {root} ...")
    for q in range(4):
        (root / f"q{q}").mkdir(parents=True, exist_ok=True)
    base = _phantom()
    rng = np.random.default_rng(20260101)
    files: list[Path] = []
    total = 0
    studies: dict[str, int] = {}
    study_bytes: dict[str, int] = {}
    for i, h in enumerate(ct_layout(n)):
        noise = rng.normal(0, 25, size=(512, 512)).astype(np.float32)
        shade = 30 * np.sin(h["InstanceNumber"] / 17.0)
        img = np.clip(base + noise + shade, 0, 4095).astype("<u2")
        data = _encode(_ct_dataset(h, img.tobytes()))
        rel = Path(f"q{i % 4}") / f"ct{i:06d}.dcm"
        (root / rel).write_bytes(data)
        files.append(root / rel)
        total += len(data)
        studies[h["StudyInstanceUID"]] = studies.get(h["StudyInstanceUID"], 0) + 1
        study_bytes[h["StudyInstanceUID"]] = study_bytes.get(h["StudyInstanceUID"], 0) + len(data)
    manifest.write_text(
        json.dumps(
            {
                "files": [str(f.relative_to(root)) for f in files],
                "total_bytes": total,
                "studies": studies,
                "study_bytes": study_bytes,
            }
        )
    )
    return CtCorpus(root, files, total, studies, study_bytes)


def load_bytes(corpus: CtCorpus) -> list[bytes]:
    return [f.read_bytes() for f in corpus.files]


# -- index corpus (tiny, pixel-less) ---------------------------------------------------


@dataclass(frozen=True)
class IndexCorpus:
    root: Path
    rows: int
    patients: list[str]

    def quarters(self) -> list[Path]:
        return [self.root / f"q{i}" for i in range(4)]


def index_layout(rows: int) -> Iterator[dict[str, Any]]:
    """Header values of the index corpus: ``rows/100`` patients, each one study of two
    series of 50 tiny instances."""
    n_patients = max(1, rows // INDEX_INSTANCES_PER_PATIENT)
    i = 0
    for p in range(n_patients):
        study_uid = uid("idx", "study", p)
        left = rows - i
        count = min(INDEX_INSTANCES_PER_PATIENT, left) if p < n_patients - 1 else left
        for k in range(count):
            se = k * SERIES_PER_STUDY // count
            yield {
                "PatientID": f"IDX{p:06d}",
                "PatientName": f"INDEX^PATIENT{p:06d}",
                "PatientBirthDate": f"19{40 + p % 50:02d}{1 + p % 12:02d}{1 + p % 28:02d}",
                "PatientSex": "MF"[p % 2],
                "StudyInstanceUID": study_uid,
                "StudyDate": f"20{10 + p % 15:02d}{1 + p % 12:02d}{1 + p % 28:02d}",
                "StudyTime": f"{7 + p % 12:02d}{p % 60:02d}00",
                "AccessionNumber": f"A{p:07d}",
                "StudyID": str(p % 9999 + 1),
                "StudyDescription": "CT THORAX",
                "ReferringPhysicianName": "REF^DOC",
                "SeriesInstanceUID": uid("idx", "series", p, se),
                "SeriesNumber": se + 1,
                "SeriesDescription": f"SERIES {se + 1}",
                "SOPInstanceUID": uid("idx", "instance", p, k),
                "InstanceNumber": k + 1,
            }
            i += 1


def tiny_dataset(h: dict[str, Any]) -> Dataset:
    ds = Dataset()
    ds.file_meta = _meta(h["SOPInstanceUID"])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = h["SOPInstanceUID"]
    ds.StudyDate = ds.SeriesDate = h["StudyDate"]
    ds.StudyTime = ds.SeriesTime = h["StudyTime"]
    ds.AccessionNumber = h["AccessionNumber"]
    ds.Modality = "CT"
    ds.ReferringPhysicianName = h["ReferringPhysicianName"]
    ds.StudyDescription = h["StudyDescription"]
    ds.SeriesDescription = h["SeriesDescription"]
    ds.PatientName = h["PatientName"]
    ds.PatientID = h["PatientID"]
    ds.PatientBirthDate = h["PatientBirthDate"]
    ds.PatientSex = h["PatientSex"]
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = h["StudyInstanceUID"]
    ds.SeriesInstanceUID = h["SeriesInstanceUID"]
    ds.StudyID = h["StudyID"]
    ds.SeriesNumber = h["SeriesNumber"]
    ds.InstanceNumber = h["InstanceNumber"]
    return ds


def index_corpus(rows: int, root: Path | None = None, *, log: Any = print) -> IndexCorpus:
    """Generate (or reuse) the tiny instance files of the index corpus."""
    root = root or WORK / f"index-{rows}"
    done = root / "complete.json"
    patients = sorted({h["PatientID"] for h in index_layout(rows)})
    if done.exists() and json.loads(done.read_text()).get("rows") == rows:
        return IndexCorpus(root, rows, patients)
    log(f"generating index corpus: {rows} tiny instances, {len(patients)} patients into {root} ...")
    for q in range(4):
        (root / f"q{q}").mkdir(parents=True, exist_ok=True)
    for i, h in enumerate(index_layout(rows)):
        (root / f"q{i % 4}" / f"i{i:07d}.dcm").write_bytes(_encode(tiny_dataset(h)))
    done.write_text(json.dumps({"rows": rows}))
    return IndexCorpus(root, rows, patients)


def ciams_index_rows(rows: int, db_url: str, *, log: Any = print) -> None:
    """Write the index corpus's rows straight into a CIAMS index (schema migrated first),
    with the values CIAMS's own ingest would have indexed from the tiny files."""
    from sqlalchemy import insert

    from ciams import db
    from ciams.archive.models import Instance, Patient, Series, Study
    from ciams.archive.parse import normalize_time
    from ciams.archive.storage import content_key

    engine = db.make_engine(db_url)
    db.upgrade(engine)
    now = datetime.now(UTC)
    patients: dict[str, int] = {}
    studies: dict[str, int] = {}
    series: dict[str, int] = {}
    p_rows: list[dict[str, Any]] = []
    st_rows: list[dict[str, Any]] = []
    se_rows: list[dict[str, Any]] = []
    in_rows: list[dict[str, Any]] = []
    for h in index_layout(rows):
        if h["PatientID"] not in patients:
            patients[h["PatientID"]] = len(patients) + 1
            p_rows.append(
                {
                    "id": patients[h["PatientID"]],
                    "patient_id": h["PatientID"],
                    "issuer_of_patient_id": "",
                    "patient_name": h["PatientName"],
                    "patient_birth_date": h["PatientBirthDate"],
                    "patient_sex": h["PatientSex"],
                    "created_at": now,
                }
            )
        if h["StudyInstanceUID"] not in studies:
            studies[h["StudyInstanceUID"]] = len(studies) + 1
            st_rows.append(
                {
                    "id": studies[h["StudyInstanceUID"]],
                    "study_instance_uid": h["StudyInstanceUID"],
                    "patient_pk": patients[h["PatientID"]],
                    "study_date": h["StudyDate"],
                    "study_time": normalize_time(h["StudyTime"]),
                    "accession_number": h["AccessionNumber"],
                    "study_id": h["StudyID"],
                    "study_description": h["StudyDescription"],
                    "referring_physician_name": h["ReferringPhysicianName"],
                    "created_at": now,
                }
            )
        if h["SeriesInstanceUID"] not in series:
            series[h["SeriesInstanceUID"]] = len(series) + 1
            se_rows.append(
                {
                    "id": series[h["SeriesInstanceUID"]],
                    "series_instance_uid": h["SeriesInstanceUID"],
                    "study_pk": studies[h["StudyInstanceUID"]],
                    "modality": "CT",
                    "series_number": h["SeriesNumber"],
                    "series_description": h["SeriesDescription"],
                    "body_part_examined": "CHEST",
                    "series_date": h["StudyDate"],
                    "series_time": normalize_time(h["StudyTime"]),
                    "created_at": now,
                    "completed_at": now,
                }
            )
        sha = hashlib.sha256(h["SOPInstanceUID"].encode()).hexdigest()
        in_rows.append(
            {
                "sop_instance_uid": h["SOPInstanceUID"],
                "series_pk": series[h["SeriesInstanceUID"]],
                "sop_class_uid": CTImageStorage,
                "instance_number": h["InstanceNumber"],
                "number_of_frames": 1,
                "rows": None,
                "columns": None,
                "transfer_syntax_uid": ExplicitVRLittleEndian,
                "size": 600,
                "sha256": sha,
                "storage_key": content_key(sha),
                "version": 1,
                "received_at": now,
                "calling_ae": "BENCH",
                "remote_address": "127.0.0.1",
                "interface": "dimse",
            }
        )
    with engine.begin() as conn:
        conn.execute(insert(Patient), p_rows)
        conn.execute(insert(Study), st_rows)
        conn.execute(insert(Series), se_rows)
        for start in range(0, len(in_rows), 10000):
            conn.execute(insert(Instance), in_rows[start : start + 10000])
    engine.dispose()
    log(
        f"CIAMS index: {len(p_rows)} patients, {len(st_rows)} studies, "
        f"{len(se_rows)} series, {len(in_rows)} instances written directly"
    )


def sample_patients(corpus: IndexCorpus, k: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(corpus.patients) for _ in range(k)]


if __name__ == "__main__":
    import sys
    import time

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    t = time.monotonic()
    c = ct_corpus(n)
    print(len(c.files), c.total_bytes / 1e6, "MB", c.studies, f"{time.monotonic() - t:.1f}s")
