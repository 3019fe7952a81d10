"""Parse and check received bytes before anything is stored (the ingest guard's first step)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ciams.errors import InvalidInstanceError

# Attribute -> (index column, maximum length) for text columns.
_REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass
class ParsedInstance:
    """What ingest needs of one received instance."""

    data: bytes
    sha256: str
    dataset: FileDataset
    transfer_syntax_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str

    @cached_property
    def values(self) -> dict[str, dict[str, Any]]:
        """Column values for each index level (computed once, by the receiving thread)."""
        return self.index_values()

    def index_values(self) -> dict[str, dict[str, Any]]:
        """Column values for each index level."""
        ds = self.dataset
        return {
            "patient": {
                "patient_id": raw_text(ds, "PatientID", 64),
                "issuer_of_patient_id": raw_text(ds, "IssuerOfPatientID", 64),
                "patient_name": raw_text(ds, "PatientName", 324),
                "patient_birth_date": raw_text(ds, "PatientBirthDate", 8),
                "patient_sex": raw_text(ds, "PatientSex", 16),
            },
            "study": {
                "study_instance_uid": self.study_instance_uid,
                "study_date": raw_text(ds, "StudyDate", 8),
                "study_time": normalize_time(raw_text(ds, "StudyTime", 16)),
                "accession_number": raw_text(ds, "AccessionNumber", 16),
                "study_id": raw_text(ds, "StudyID", 16),
                "study_description": raw_text(ds, "StudyDescription", 64),
                "referring_physician_name": raw_text(ds, "ReferringPhysicianName", 324),
            },
            "series": {
                "series_instance_uid": self.series_instance_uid,
                "modality": raw_text(ds, "Modality", 16),
                "series_number": raw_integer(ds, "SeriesNumber"),
                "series_description": raw_text(ds, "SeriesDescription", 64),
                "body_part_examined": raw_text(ds, "BodyPartExamined", 16),
                "series_date": raw_text(ds, "SeriesDate", 8),
                "series_time": normalize_time(raw_text(ds, "SeriesTime", 16)),
            },
            "instance": {
                "sop_instance_uid": self.sop_instance_uid,
                "sop_class_uid": self.sop_class_uid,
                "instance_number": raw_integer(ds, "InstanceNumber"),
                "number_of_frames": raw_integer(ds, "NumberOfFrames") or 1,
                "rows": integer(ds, "Rows"),
                "columns": integer(ds, "Columns"),
                "transfer_syntax_uid": self.transfer_syntax_uid,
                "size": len(self.data),
                "sha256": self.sha256,
            },
        }


def _ascii_raw(ds: Dataset, keyword: str) -> str | None:
    """The still-undecoded value of a string attribute when it is plain ASCII without
    ISO 2022 escapes (no character set can change it then); None when pydicom has to
    convert it."""
    elem = ds.get_item(keyword)
    if not isinstance(elem, RawDataElement):
        return None
    raw = elem.value
    if raw is None:
        return ""
    if not isinstance(raw, bytes) or not raw.isascii() or b"\x1b" in raw:
        return None
    return raw.decode("ascii")


def raw_text(ds: Dataset, keyword: str, limit: int) -> str:
    """:func:`text` without pydicom's value conversion when the bytes allow it: this
    runs for every received instance, and conversion cost more than the rest of the
    index values together."""
    value = _ascii_raw(ds, keyword)
    if value is None:
        return text(ds, keyword, limit)
    return value.strip(" \x00")[:limit]


def raw_integer(ds: Dataset, keyword: str) -> int | None:
    """:func:`integer` for IS attributes, from the raw bytes when it can."""
    value = _ascii_raw(ds, keyword)
    if value is None:
        return integer(ds, keyword)
    try:
        return int(value.split("\\", 1)[0].strip(" \x00"))
    except ValueError:
        return integer(ds, keyword)


def text(ds: Dataset, keyword: str, limit: int) -> str:
    """An attribute as text (multi-values joined by backslash), cut to the column size."""
    elem = ds.get(keyword)
    if elem is None or elem == "":
        return ""
    if isinstance(elem, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in elem)
    else:
        value = str(elem)
    return value.strip()[:limit]


def integer(ds: Dataset, keyword: str) -> int | None:
    """An IS/US attribute as int, None when absent or unparsable."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, pydicom.multival.MultiValue):
            value = value[0]
        return int(value)
    except (TypeError, ValueError):
        return None


def normalize_time(value: str) -> str:
    """TM as ``HHMMSS[.ffffff]`` so that string order is time order (old ``HH:MM:SS`` too)."""
    value = value.replace(":", "").strip()
    if not value:
        return ""
    whole, _, frac = value.partition(".")
    whole = whole.ljust(6, "0")[:6]
    return f"{whole}.{frac}" if frac else whole


def parse_instance(data: bytes) -> ParsedInstance:
    """Parse a DICOM Part 10 byte string; raise :class:`InvalidInstanceError` saying why not."""
    if len(data) < 132:
        raise InvalidInstanceError(f"not a DICOM file: only {len(data)} bytes")
    try:
        ds = pydicom.dcmread(BytesIO(data), force=False)
    except InvalidDicomError as exc:
        raise InvalidInstanceError(f"not a DICOM Part 10 file: {exc}") from exc
    except Exception as exc:
        raise InvalidInstanceError(
            f"malformed or truncated DICOM: {type(exc).__name__}: {exc}"
        ) from exc
    ts = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    if not ts:
        raise InvalidInstanceError("file meta has no Transfer Syntax UID (0002,0010)")
    uids: dict[str, str] = {}
    for keyword in _REQUIRED_UIDS:
        try:
            value = str(ds.get(keyword, "") or "").strip()
        except Exception as exc:
            raise InvalidInstanceError(f"cannot read {keyword}: {exc}") from exc
        if not value:
            raise InvalidInstanceError(f"missing {keyword}")
        if len(value) > 64 or not UID(value).is_valid:
            raise InvalidInstanceError(f"invalid {keyword} {value[:80]!r}")
        uids[keyword] = value
    meta_sop = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    if meta_sop and meta_sop != uids["SOPInstanceUID"]:
        raise InvalidInstanceError(
            f"file meta Media Storage SOP Instance UID {meta_sop} differs from "
            f"SOP Instance UID {uids['SOPInstanceUID']}"
        )
    _check_pixel_length(ds, UID(ts))
    return ParsedInstance(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        dataset=ds,
        transfer_syntax_uid=ts,
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
    )


def _check_pixel_length(ds: Dataset, ts: UID) -> None:
    """Native pixel data must be as long as Rows x Columns x samples x bits x frames."""
    elem = ds.get((0x7FE0, 0x0010))
    if elem is None or ts.is_compressed or ts.is_deflated:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = integer(ds, "NumberOfFrames") or 1
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidInstanceError(f"pixel data without a valid image description: {exc}") from exc
    expected_bits = rows * cols * spp * bits * frames
    expected = (expected_bits + 7) // 8
    actual = len(elem.value or b"")
    if actual < expected:
        raise InvalidInstanceError(
            f"truncated pixel data: {actual} bytes, expected {expected} "
            f"({rows}x{cols}x{spp} samples, {bits} bits, {frames} frames)"
        )
