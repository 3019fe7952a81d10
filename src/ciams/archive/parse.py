"""Parse and check received bytes before anything is stored (the ingest guard's first step)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from io import BytesIO
from typing import Any, TypedDict

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ciams.archive.header import PIXEL_DATA, TAGS, Header, scan, uid_text
from ciams.errors import InvalidInstanceError

_REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
# UID.is_valid's pattern, used on scanned values without making a UID, which would
# warn about an invalid value before the pydicom path reports it.
_VALID_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\Z")
# An IS value pydicom reads without a warning and int() reads the same way.
_PLAIN_IS = re.compile(rb" *[0-9]+ *")
# (keyword, tag, column size) of the text index columns.
_TEXTS = tuple(
    (keyword, TAGS[keyword], limit)
    for keyword, limit in (
        ("PatientID", 64),
        ("IssuerOfPatientID", 64),
        ("PatientName", 324),
        ("PatientBirthDate", 8),
        ("PatientSex", 16),
        ("StudyDate", 8),
        ("StudyTime", 16),
        ("AccessionNumber", 16),
        ("StudyID", 16),
        ("StudyDescription", 64),
        ("ReferringPhysicianName", 324),
        ("Modality", 16),
        ("SeriesDescription", 64),
        ("BodyPartExamined", 16),
        ("SeriesDate", 8),
        ("SeriesTime", 16),
    )
)
_INTEGERS = tuple((k, TAGS[k]) for k in ("SeriesNumber", "InstanceNumber", "NumberOfFrames"))
_SHORTS = tuple((k, TAGS[k]) for k in ("Rows", "Columns"))


@dataclass
class ParsedInstance:
    """What ingest needs of one received instance."""

    data: bytes | bytearray
    sha256: str
    transfer_syntax_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    header: Header | None = field(default=None, repr=False, compare=False)
    """The scanned attribute positions; None when pydicom parsed the instance."""

    @cached_property
    def dataset(self) -> FileDataset:
        """The pydicom data set, read on first use: ingest needs only the scanned
        values, but guards (de-identification checks) read the whole data set."""
        return pydicom.dcmread(BytesIO(self.data))

    @cached_property
    def values(self) -> dict[str, dict[str, Any]]:
        """Column values for each index level (computed once, by the receiving thread)."""
        return self.index_values()

    def index_values(self) -> dict[str, dict[str, Any]]:
        """Column values for each index level."""
        t = self._texts()
        n = self._numbers()
        return {
            "patient": {
                "patient_id": t["PatientID"],
                "issuer_of_patient_id": t["IssuerOfPatientID"],
                "patient_name": t["PatientName"],
                "patient_birth_date": t["PatientBirthDate"],
                "patient_sex": t["PatientSex"],
            },
            "study": {
                "study_instance_uid": self.study_instance_uid,
                "study_date": t["StudyDate"],
                "study_time": normalize_time(t["StudyTime"]),
                "accession_number": t["AccessionNumber"],
                "study_id": t["StudyID"],
                "study_description": t["StudyDescription"],
                "referring_physician_name": t["ReferringPhysicianName"],
            },
            "series": {
                "series_instance_uid": self.series_instance_uid,
                "modality": t["Modality"],
                "series_number": n["SeriesNumber"],
                "series_description": t["SeriesDescription"],
                "body_part_examined": t["BodyPartExamined"],
                "series_date": t["SeriesDate"],
                "series_time": normalize_time(t["SeriesTime"]),
            },
            "instance": {
                "sop_instance_uid": self.sop_instance_uid,
                "sop_class_uid": self.sop_class_uid,
                "instance_number": n["InstanceNumber"],
                "number_of_frames": n["NumberOfFrames"] or 1,
                "rows": n["Rows"],
                "columns": n["Columns"],
                "transfer_syntax_uid": self.transfer_syntax_uid,
                "size": len(self.data),
                "sha256": self.sha256,
            },
        }

    def _texts(self) -> dict[str, str]:
        """Keyword -> :func:`raw_text` of the text columns, from the scanned bytes when
        there are some (one loop: this runs for every received instance)."""
        header = self.header
        if header is None:
            ds = self.dataset
            return {keyword: raw_text(ds, keyword, limit) for keyword, _tag, limit in _TEXTS}
        data = header.data
        elements = header.elements
        out: dict[str, str] = {}
        for keyword, tag, limit in _TEXTS:
            found = elements.get(tag)
            if found is None:
                out[keyword] = ""
                continue
            start = found[1]
            raw = data[start : start + found[2]]
            if raw.isascii() and b"\x1b" not in raw:
                # No character set changes plain ASCII without escapes.
                out[keyword] = raw.decode("ascii").strip(" \x00")[:limit]
            else:
                out[keyword] = text(self.dataset, keyword, limit)
        return out

    def _numbers(self) -> dict[str, int | None]:
        """Keyword -> value of the integer columns: :func:`raw_integer` for the IS
        ones, :func:`integer` for the US ones, from the scanned bytes when it can."""
        header = self.header
        if header is None:
            ds = self.dataset
            out = {keyword: raw_integer(ds, keyword) for keyword, _tag in _INTEGERS}
            out.update((keyword, integer(ds, keyword)) for keyword, _tag in _SHORTS)
            return out
        out = {}
        for keyword, tag in _INTEGERS:
            raw = header.raw(tag)
            if raw is None:
                out[keyword] = None
            elif raw.isascii() and b"\x1b" not in raw:
                first = raw.decode("ascii").split("\\", 1)[0].strip(" \x00")
                if not first:
                    # pydicom reads an empty first value as "", which integer() makes
                    # None: saying so here spares reading the whole data set.
                    out[keyword] = None
                    continue
                try:
                    out[keyword] = int(first)
                except ValueError:
                    out[keyword] = integer(self.dataset, keyword)
            else:
                out[keyword] = integer(self.dataset, keyword)
        for keyword, tag in _SHORTS:
            value = header.us(tag)
            if value is None and tag in header.elements:
                value = integer(self.dataset, keyword)
            out[keyword] = value
        return out


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


def parse_instance(data: bytes | bytearray, *, fast: bool = True) -> ParsedInstance:
    """Parse a DICOM Part 10 byte string; raise :class:`InvalidInstanceError` saying why not.

    The header scanner handles the common case; whatever it does not accept (other
    transfer syntaxes, odd encodings, damage, invalid values) is parsed by pydicom,
    so the results and the error messages are pydicom's.  ``fast=False`` forces
    pydicom (tests compare both).
    """
    if fast:
        parsed = _parse_header(data)
        if parsed is not None:
            return parsed
    return _parse_dataset(data)


def _parse_header(data: bytes | bytearray) -> ParsedInstance | None:
    """:func:`parse_instance` from the scanned bytes, None when pydicom has to decide.

    Only acceptance and the pixel length error are decided here: every other
    rejection is left to pydicom so that its message stays the same.
    """
    header = scan(data)
    # A character set pydicom corrects (with a warning) is left to pydicom as well.
    if header is None or not header.plain_character_set():
        return None
    uids: dict[str, str] = {}
    for keyword in _REQUIRED_UIDS:
        value = header.uid(TAGS[keyword])
        if not value or len(value) > 64 or not _VALID_UID.match(value):
            return None
        uids[keyword] = value
    if header.media_storage_sop_instance_uid is not None:
        meta_sop = uid_text(header.media_storage_sop_instance_uid)
        if meta_sop is None or (meta_sop and meta_sop != uids["SOPInstanceUID"]):
            return None
    native_pixels = not header.encapsulated and PIXEL_DATA in header.elements
    if native_pixels and not _header_pixel_length_checked(header):
        return None
    return ParsedInstance(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        transfer_syntax_uid=header.transfer_syntax_uid,
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        header=header,
    )


def _header_pixel_length_checked(header: Header) -> bool:
    """:func:`_check_pixel_length` on scanned values: True when the length is right,
    False when only pydicom can tell (values that are not plain binary US or plain IS
    digits), :class:`InvalidInstanceError` when the pixel data is short."""
    rows = header.us(TAGS["Rows"])
    cols = header.us(TAGS["Columns"])
    bits = header.us(TAGS["BitsAllocated"])
    if rows is None or cols is None or bits is None:
        return False
    spp = 1
    if TAGS["SamplesPerPixel"] in header.elements:
        value = header.us(TAGS["SamplesPerPixel"])
        if value is None:
            return False
        spp = value or 1
    frames = 1
    raw = header.raw(TAGS["NumberOfFrames"])
    if raw is not None:
        if not header.has_vr(TAGS["NumberOfFrames"], b"IS"):
            return False
        if len(raw) > 12 or not _PLAIN_IS.fullmatch(raw):
            return False
        frames = int(raw.decode("ascii")) or 1
    vr, _start, length = header.elements[PIXEL_DATA]
    if not header.implicit and vr not in (b"OB", b"OW"):
        return False
    error = _pixel_length_error(length, rows, cols, spp, bits, frames)
    if error is not None:
        raise InvalidInstanceError(error)
    return True


def _parse_dataset(data: bytes | bytearray) -> ParsedInstance:
    """:func:`parse_instance` with pydicom reading the whole file."""
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
    parsed = ParsedInstance(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        transfer_syntax_uid=ts,
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
    )
    parsed.dataset = ds
    return parsed


class InstanceIds(TypedDict, total=False):
    """The identifying UIDs of an instance, named as :class:`IngestResult` fields."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str


_IDENTITY = (
    ("sop_instance_uid", "SOPInstanceUID"),
    ("sop_class_uid", "SOPClassUID"),
    ("study_instance_uid", "StudyInstanceUID"),
    ("series_instance_uid", "SeriesInstanceUID"),
)


def identify(data: bytes | bytearray) -> InstanceIds:
    """The UIDs a refused input names, as far as they can be read and are valid UIDs.

    A failure report (STOW-RS FailedSOPSequence, whose items need the SOP Class and
    Instance UIDs) and the quarantine entry then say which instance was refused.
    """
    try:
        ds = pydicom.dcmread(
            BytesIO(data),
            force=True,
            stop_before_pixels=True,
            specific_tags=[keyword for _, keyword in _IDENTITY],
        )
        values = {name: str(ds.get(keyword, "") or "").strip() for name, keyword in _IDENTITY}
    except Exception:  # refused input can break pydicom in any way
        return {}
    ids = InstanceIds()
    for name, value in values.items():
        if value and len(value) <= 64 and _VALID_UID.match(value):
            ids[name] = value  # type: ignore[literal-required]
    return ids


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
    error = _pixel_length_error(len(elem.value or b""), rows, cols, spp, bits, frames)
    if error is not None:
        raise InvalidInstanceError(error)


def _pixel_length_error(
    actual: int, rows: int, cols: int, spp: int, bits: int, frames: int
) -> str | None:
    """Why ``actual`` bytes of native pixel data are too few, None when they are not."""
    expected = (rows * cols * spp * bits * frames + 7) // 8
    if actual >= expected:
        return None
    return (
        f"truncated pixel data: {actual} bytes, expected {expected} "
        f"({rows}x{cols}x{spp} samples, {bits} bits, {frames} frames)"
    )
