"""Test corpora: pydicom's bundled vendor files and generated CT / MR series."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)


def vendor_files() -> list[Path]:
    """Bundled pydicom test files that are valid, storable instances (present locally)."""
    from ciams.archive import parse_instance
    from ciams.errors import InvalidInstanceError

    out = []
    with warnings.catch_warnings():
        # pydicom warns that files needing a download (impossible here) are left out.
        warnings.simplefilter("ignore")
        names = get_testdata_files("*.dcm")
    for name in names:
        path = Path(name)
        try:
            parse_instance(path.read_bytes())
        except InvalidInstanceError:
            continue
        out.append(path)
    return out


def vendor_file(name: str) -> Path:
    """One bundled file by name (no download)."""
    found = get_testdata_file(name, download=False)
    if found is None:
        raise FileNotFoundError(name)
    return Path(str(found))


def make_instance(
    *,
    modality: str = "CT",
    patient_id: str = "PAT001",
    patient_name: str = "Doe^Jane",
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
    rows: int = 64,
    columns: int = 64,
    study_date: str = "20240115",
    study_time: str = "101500",
    accession: str = "ACC001",
    series_number: int = 1,
    study_description: str = "CT ABDOMEN",
    series_description: str = "AXIAL 5mm",
    seed: int = 0,
) -> Dataset:
    """A valid single-frame CT or MR image with 16-bit pixels."""
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    meta = FileMetaDataset()
    sop_uid = generate_uid()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.SeriesDate = study_date
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.Modality = modality
    ds.Manufacturer = "CIAMS-TEST"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0, 0, float(instance_number) * 5]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 5
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    rng = np.random.default_rng(seed + instance_number)
    ds.PixelData = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16).tobytes()
    return ds


def make_series(count: int, **kwargs: object) -> Iterator[Dataset]:
    """``count`` instances of one series (shared study and series UIDs)."""
    kwargs.setdefault("study_uid", generate_uid())
    kwargs.setdefault("series_uid", generate_uid())
    for n in range(1, count + 1):
        yield make_instance(instance_number=n, **kwargs)  # type: ignore[arg-type]


def write(ds: Dataset, path: Path) -> Path:
    """Save as a Part 10 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def to_bytes(ds: Dataset) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
