"""Synthetic test data: the marker corpus and a plain CT series (tests and benchmark).

:func:`marker_dataset` builds a CT instance in which every attribute of PS3.15
Table E.1-1 carries its own marker value (``ZQnnnn`` text, a distinct date, a
``1.2.999.n`` UID), also inside sequences, in private attributes, in overlays and
curves; :func:`ultrasound_with_text` renders identifying text into ultrasound
pixels.  A de-identifier passes when no marker of an attribute the profile does not
retain is left in the output bytes (and no rendered marker in OCR of the pixels).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from ciams.deid._standard import annex_e

MARKER_RE = re.compile(rb"zq\d{4}", re.IGNORECASE)
UID_MARKER_PREFIX = "1.2.999."
_STRING_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC", "CS", "AE"}
_SKIP_GROUPS = {0x0000, 0x0002}


@dataclass
class MarkerSet:
    """What was planted: marker text -> tag (text markers, dates and UIDs)."""

    text: dict[str, int] = field(default_factory=dict)
    dates: dict[str, int] = field(default_factory=dict)
    uids: dict[str, int] = field(default_factory=dict)

    def found_in(self, data: bytes) -> dict[str, int]:
        """Markers present in ``data`` (case-insensitive) -> the tag they were planted in."""
        low = data.lower()
        hits: dict[str, int] = {}
        for m in MARKER_RE.finditer(low):
            key = m.group(0).decode().upper()
            if key in self.text:
                hits[key] = self.text[key]
        for value, tag in (*self.dates.items(), *self.uids.items()):
            if re.search(rb"(?<![0-9.])" + re.escape(value.encode()) + rb"(?![0-9])", data):
                hits[value] = tag
        return hits


def _base_ct(rows: int = 16, cols: int = 16) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Manufacturer = "ACME MEDICAL"
    ds.ManufacturerModelName = "Scanner 3000"
    ds.SoftwareVersions = "1.0"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.KVP = "120"
    ds.SliceThickness = "1.0"
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PositionReferenceIndicator = ""
    ds.PixelSpacing = [0.5, 0.5]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.PixelData = (np.arange(rows * cols, dtype=np.uint16) % 4096).tobytes()
    return ds


def marker_dataset(
    patient_id: str = "MRN0001", *, private: bool = True, overlays: bool = True
) -> tuple[Dataset, MarkerSet]:
    """A CT instance with a marker in every Table E.1-1 attribute."""
    ds = _base_ct()
    markers = MarkerSet()
    base_date = dt.date(1700, 1, 1)
    n = 0
    n_dates = 0

    def text_marker(tag: int) -> str:
        nonlocal n
        n += 1
        value = f"ZQ{n:04d}"
        markers.text[value] = tag
        return value

    def date_marker(tag: int) -> str:
        # dates further apart than any date shift, so a shifted date is never a marker
        nonlocal n_dates
        n_dates += 1
        value = (base_date + dt.timedelta(days=1201 * n_dates)).strftime("%Y%m%d")
        markers.dates[value] = tag
        return value

    def uid_marker(tag: int) -> str:
        nonlocal n
        n += 1
        value = f"{UID_MARKER_PREFIX}{n}"
        markers.uids[value] = tag
        return value

    def nested_item(tag: int) -> Dataset:
        item = Dataset()
        item.PersonName = text_marker(tag)
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = uid_marker(tag)
        return item

    for tag, (_keyword, vr, _basic, _opts) in sorted(annex_e.ATTRIBUTES.items()):
        if tag >> 16 in _SKIP_GROUPS or tag in (0xFFFAFFFA, 0xFFFCFFFC):
            continue
        if vr in _STRING_VRS:
            value: object = text_marker(tag)
        elif vr == "UR":
            value = f"http://{text_marker(tag).lower()}.example/"
        elif vr == "DA":
            value = date_marker(tag)
        elif vr == "DT":
            value = date_marker(tag) + "101010"
        elif vr == "TM":
            value = "101010"
        elif vr == "AS":
            value = "042Y"
        elif vr in ("DS", "IS"):
            value = "42"
        elif vr == "UI":
            value = uid_marker(tag)
        elif vr in ("OB", "UN"):
            value = text_marker(tag).encode()
        elif vr == "SQ":
            value = Sequence([nested_item(tag)])
        elif vr in ("US", "SS", "UL", "SL"):
            value = 1
        else:
            continue
        ds.add_new(tag, vr, value)
    ds.PatientID = patient_id
    markers.text = {k: v for k, v in markers.text.items()}
    if private:
        block = ds.private_block(0x0011, "ZQ MARKER CORP", create=True)
        block.add_new(0x01, "LO", text_marker(0x00110001))
        block.add_new(0x02, "UI", uid_marker(0x00110002))
        inner = Dataset()
        inner.add_new(0x00091010, "LO", text_marker(0x00091010))
        block.add_new(0x03, "SQ", Sequence([inner]))
    if overlays:
        ds.add_new(0x60000010, "US", 16)
        ds.add_new(0x60000011, "US", 16)
        ds.add_new(0x60000040, "CS", "G")
        ds.add_new(0x60000050, "SS", [1, 1])
        ds.add_new(0x60000100, "US", 1)
        ds.add_new(0x60000102, "US", 0)
        ds.add_new(0x60000022, "LO", text_marker(0x60000022))
        ds.add_new(0x60003000, "OW", (text_marker(0x60003000) + "______").encode()[:32])
        ds.add_new(0x60004000, "LT", text_marker(0x60004000))
        ds.add_new(0x50003000, "OB", text_marker(0x50003000).encode())
    ds.file_meta.SourceApplicationEntityTitle = text_marker(0x00020016)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds, markers


def ct_series(
    n: int, *, patient_id: str = "MRN0001", study: str | None = None, rows: int = 64, cols: int = 64
) -> list[Dataset]:
    """``n`` plain CT slices of one series with typical identifying header content."""
    study_uid = study or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    out: list[Dataset] = []
    for i in range(n):
        ds = _base_ct(rows, cols)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = "DOE^JOHN^Q"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19650412"
        ds.PatientSex = "M"
        ds.PatientAddress = "12 Elm Street, Springfield"
        ds.PatientTelephoneNumbers = "555-123-4567"
        ds.OtherPatientIDs = "OTHER99887"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240305"
        ds.StudyTime = ds.SeriesTime = "101500"
        ds.AccessionNumber = "ACC778899"
        ds.StudyID = "4711"
        ds.InstitutionName = "Springfield General Hospital"
        ds.InstitutionAddress = "1 Hospital Road, Springfield"
        ds.ReferringPhysicianName = "HOUSE^GREGORY"
        ds.PerformingPhysicianName = "WILSON^JAMES"
        ds.OperatorsName = "CAMERON^ALLISON"
        ds.StationName = "CTSTATION7"
        ds.DeviceSerialNumber = "SN-44556677"
        ds.StudyDescription = "CT ABDOMEN DOE"
        ds.SeriesDescription = "PORTAL VENOUS 2mm"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.SliceLocation = float(i)
        ref = Dataset()
        ref.ReferencedSOPClassUID = CTImageStorage
        ref.ReferencedSOPInstanceUID = out[-1].SOPInstanceUID if out else ds.SOPInstanceUID
        ds.ReferencedImageSequence = Sequence([ref])
        block = ds.private_block(0x0029, "ACME PRIVATE", create=True)
        block.add_new(0x10, "LO", "DOE JOHN")
        out.append(ds)
    return out


def ultrasound_with_text(
    lines: list[str], *, rows: int = 240, cols: int = 320, burned_in: str | None = "YES"
) -> Dataset:
    """An ultrasound image with ``lines`` rendered as burned-in text at the top."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=18)
    for i, line in enumerate(lines):
        draw.text((8, 6 + 24 * i), line, fill=255, font=font)
    arr = np.array(img, dtype=np.uint8)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:rows, 0:cols]
    sector = ((xx - cols / 2) ** 2 + (yy - rows) ** 2) < (rows * 0.6) ** 2
    speckle = rng.integers(20, 120, size=arr.shape, dtype=np.uint8)
    arr = np.where(sector & (arr == 0), speckle, arr).astype(np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "US"
    ds.Manufacturer = "ACME ULTRASOUND"
    ds.ManufacturerModelName = "Sono 1"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "MRN0002"
    ds.PatientSex = "F"
    ds.PatientBirthDate = "19800202"
    ds.StudyDate = "20240101"
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = arr.tobytes()
    return ds
