"""The header scanner gives exactly what the pydicom path gives, or steps aside."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import ENCODED_VR
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from ciams.archive import header as header_module
from ciams.archive.header import ENCAPSULATED_SYNTAXES, TAGS, scan
from ciams.archive.parse import parse_instance
from ciams.errors import InvalidInstanceError
from tests.corpus import make_instance, to_bytes

Outcome = tuple[Any, ...]


def _outcome(data: bytes, *, fast: bool) -> Outcome:
    """What parse_instance makes of ``data``: the accepted values or the error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed = parse_instance(data, fast=fast)
        except InvalidInstanceError as exc:
            return ("rejected", type(exc).__name__, exc.message)
        except Exception as exc:
            return ("rejected", type(exc).__name__, str(exc))
        return (
            "accepted",
            parsed.sha256,
            parsed.transfer_syntax_uid,
            parsed.sop_instance_uid,
            parsed.sop_class_uid,
            parsed.study_instance_uid,
            parsed.series_instance_uid,
            parsed.index_values(),
        )


def _same_outcome(data: bytes) -> Outcome:
    fast = _outcome(data, fast=True)
    assert fast == _outcome(data, fast=False)
    return fast


def _vendor_files() -> list[Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [Path(name) for name in sorted(get_testdata_files("*.dcm"))]


def _vendor(name: str) -> bytes:
    found = get_testdata_file(name, download=False)
    assert found is not None, name
    return Path(str(found)).read_bytes()


def _nested_sequences(*, implicit: bool = False) -> bytes:
    """An instance with an undefined-length sequence whose undefined-length item holds
    another undefined-length sequence (one undefined-length and one defined-length
    item), placed before the attributes ingest reads."""
    ds = make_instance(patient_name="Nested^Seq", series_description="AFTER SEQ")
    inner = []
    for n, undefined in enumerate((True, False)):
        code = Dataset()
        code.CodeValue = f"C{n}"
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = "nested"
        code.is_undefined_length_sequence_item = undefined
        inner.append(code)
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    item.PurposeOfReferenceCodeSequence = Sequence(inner)
    item["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    # (0008,0110) sorts before every attribute ingest reads except the character
    # set, SOP Class/Instance UIDs and the dates.
    ds.CodingSchemeIdentificationSequence = Sequence([item])
    ds["CodingSchemeIdentificationSequence"].is_undefined_length = True
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = to_bytes(ds)
    assert data.count(b"\xfe\xff\xdd\xe0") == 2  # both sequences have undefined length
    return data


def test_vr_tables_agree_with_pydicom() -> None:
    two_byte = {vr for vr in ENCODED_VR if len(vr) == 2}
    long_vrs = {vr.encode() for vr in EXPLICIT_VR_LENGTH_32}
    assert long_vrs == header_module._LONG_VRS
    assert two_byte - long_vrs == header_module._SHORT_VRS


def test_wanted_tags_are_the_keywords_tags() -> None:
    for keyword, tag in TAGS.items():
        assert tag_for_keyword(keyword) == tag, keyword


def test_encapsulated_syntaxes_leave_out_what_pydicom_reads_otherwise() -> None:
    assert "1.2.840.10008.1.2.4.50" in ENCAPSULATED_SYNTAXES  # JPEG baseline
    assert "1.2.840.10008.1.2.5" in ENCAPSULATED_SYNTAXES  # RLE
    assert "1.2.840.10008.1.2.1.99" not in ENCAPSULATED_SYNTAXES  # deflated
    assert "1.2.840.10008.1.2.4.95" not in ENCAPSULATED_SYNTAXES  # JPIP deflate
    assert "1.2.840.10008.1.2.2" not in ENCAPSULATED_SYNTAXES  # big endian


def test_vendor_files_give_the_same_instance_both_ways() -> None:
    fast_taken = 0
    syntaxes: set[str] = set()
    for path in _vendor_files():
        data = path.read_bytes()
        outcome = _same_outcome(data)
        if outcome[0] != "accepted":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = parse_instance(data)
        if parsed.header is not None:
            fast_taken += 1
            if parsed.header.implicit:
                syntaxes.add("implicit")
            elif parsed.header.encapsulated:
                syntaxes.add("encapsulated")
            else:
                syntaxes.add("explicit")
    assert fast_taken >= 40
    assert syntaxes == {"implicit", "explicit", "encapsulated"}


def test_ascii_values_do_not_read_the_dataset() -> None:
    data = to_bytes(make_instance())
    parsed = parse_instance(data)
    assert parsed.header is not None
    values = parsed.values
    assert "dataset" not in vars(parsed)
    assert values["patient"]["patient_name"] == "Doe^Jane"
    assert values["instance"]["rows"] == 64
    assert values["instance"]["number_of_frames"] == 1
    # The data set is still there for the guards, read on first use.
    assert parsed.dataset.SOPInstanceUID == parsed.sop_instance_uid


@pytest.mark.parametrize("implicit", [False, True])
def test_nested_undefined_length_sequences_are_skipped(implicit: bool) -> None:
    data = _nested_sequences(implicit=implicit)
    header = scan(data)
    assert header is not None
    assert header.implicit is implicit
    assert header.raw(TAGS["PatientName"]) == b"Nested^Seq"
    assert header.us(TAGS["Rows"]) == 64
    outcome = _same_outcome(data)
    assert outcome[0] == "accepted"
    assert outcome[-1]["series"]["series_description"] == "AFTER SEQ"


def _truncation_cases() -> list[tuple[str, bytes, list[int]]]:
    nested = _nested_sequences()
    sequence = nested.index(b"\x08\x00\x10\x01SQ")
    nested_implicit = _nested_sequences(implicit=True)
    sequence_implicit = nested_implicit.index(b"\x08\x00\x10\x01")
    jpeg = _vendor("JPEG2000.dcm")
    jpeg_pixels = jpeg.index(b"\xe0\x7f\x10\x00OB")
    rle = _vendor("SC_rgb_rle.dcm")
    rle_pixels = rle.index(b"\xe0\x7f\x10\x00OB")
    return [
        (
            "explicit",
            nested,
            [133, 150, sequence + 6, sequence + 30, sequence + 90, len(nested) - 4000],
        ),
        (
            "implicit",
            nested_implicit,
            [sequence_implicit + 10, sequence_implicit + 60, len(nested_implicit) - 1],
        ),
        ("jpeg2000", jpeg, [300, jpeg_pixels + 6, jpeg_pixels + 30, len(jpeg) - 6, len(jpeg) - 1]),
        ("rle", rle, [rle_pixels + 14, (rle_pixels + len(rle)) // 2, len(rle) - 8, len(rle) - 3]),
    ]


@pytest.mark.parametrize(("name", "data", "cuts"), _truncation_cases())
def test_truncated_files_get_the_pydicom_outcome(name: str, data: bytes, cuts: list[int]) -> None:
    assert scan(data) is not None, name
    for cut in cuts:
        short = data[:cut]
        # Every cut is inside an element: the scanner notices and steps aside.
        assert scan(short) is None, (name, cut)
        outcome = _same_outcome(short)
        if outcome[0] == "rejected":
            assert outcome[1] == "InvalidInstanceError", (name, cut, outcome)


def test_truncated_native_pixel_data_is_rejected() -> None:
    data = to_bytes(make_instance())
    outcome = _same_outcome(data[:-100])
    assert outcome[0] == "rejected"
    assert "truncated pixel data: 8092 bytes, expected 8192" in outcome[2]


def test_short_pixel_data_is_rejected_by_the_scanner_with_pydicom_path_text() -> None:
    ds = make_instance()
    ds.PixelData = ds.PixelData[:1000]
    data = to_bytes(ds)
    assert scan(data) is not None
    with pytest.raises(InvalidInstanceError) as fast:
        parse_instance(data)
    with pytest.raises(InvalidInstanceError) as slow:
        parse_instance(data, fast=False)
    assert fast.value.message == slow.value.message
    assert fast.value.message == (
        "truncated pixel data: 1000 bytes, expected 8192 (64x64x1 samples, 16 bits, 1 frames)"
    )


@pytest.mark.parametrize("keyword", ["StudyDescription", "PixelData"])
def test_absurd_element_length(keyword: str) -> None:
    data = bytearray(to_bytes(make_instance()))
    tag = tag_for_keyword(keyword)
    assert tag is not None
    at = data.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF), 132)
    if bytes(data[at + 4 : at + 6]) in (b"OB", b"OW"):
        struct.pack_into("<I", data, at + 8, 0x7FFFFFF0)
    else:
        struct.pack_into("<H", data, at + 6, 0xFFF0)
    assert scan(bytes(data)) is None
    outcome = _same_outcome(bytes(data))
    if keyword == "StudyDescription":
        # pydicom reads the rest of the file as its value: no UIDs after it.
        assert outcome == ("rejected", "InvalidInstanceError", "missing StudyInstanceUID")
    else:
        # pydicom reads what there is, which is all the pixel data.
        assert outcome[0] == "accepted"


def test_missing_sop_instance_uid() -> None:
    ds = make_instance()
    del ds.SOPInstanceUID
    outcome = _same_outcome(to_bytes(ds))
    assert outcome == ("rejected", "InvalidInstanceError", "missing SOPInstanceUID")


def test_meta_sop_instance_uid_must_match() -> None:
    ds = make_instance()
    data = to_bytes(ds)
    meta_uid = ds.SOPInstanceUID.encode()
    # pydicom's writer copies the SOP Instance UID into the meta: change the bytes.
    at = data.index(meta_uid)
    assert at < data.index(b"\x08\x00\x05\x00")
    other = b"8" if meta_uid.endswith(b"9") else b"9"  # a digit the UID does not end with
    data = data[:at] + meta_uid[:-1] + other + data[at + len(meta_uid) :]
    outcome = _same_outcome(data)
    assert outcome[0] == "rejected"
    assert "differs from SOP Instance UID" in outcome[2]


def test_invalid_uid() -> None:
    ds = make_instance()
    ds.SeriesInstanceUID = "1.2.03"
    outcome = _same_outcome(to_bytes(ds))
    assert outcome == ("rejected", "InvalidInstanceError", "invalid SeriesInstanceUID '1.2.03'")


def test_file_without_dicm() -> None:
    data = bytearray(to_bytes(make_instance()))
    data[128:132] = b"DICX"
    assert scan(bytes(data)) is None
    outcome = _same_outcome(bytes(data))
    assert outcome[0] == "rejected"
    assert outcome[2].startswith("not a DICOM Part 10 file")


def test_un_of_undefined_length_is_left_to_pydicom() -> None:
    data = _nested_sequences()
    at = data.index(b"\x08\x00\x10\x01SQ")
    data = data[: at + 4] + b"UN" + data[at + 6 :]
    assert scan(data) is None
    _same_outcome(data)


def test_fragments_running_past_the_end_are_left_to_pydicom() -> None:
    data = bytearray(_vendor("SC_rgb_rle.dcm"))
    at = data.index(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff") + 12
    struct.pack_into("<I", data, at + 4, 0x7FFFFFF0)  # the offset table item
    assert scan(bytes(data)) is None
    _same_outcome(bytes(data))


@pytest.mark.parametrize(
    "charset", ["ISO_IR100", "ISO_IR 192\\ISO 2022 IR 87", "\\ISO 2022 IR 87", "ISO_IR 100"]
)
def test_character_sets_pydicom_corrects_are_left_to_it(charset: str) -> None:
    ds = make_instance(patient_name="Müller^Jörg" if "100" in charset else "Doe^Jane")
    ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = to_bytes(ds)
    _same_outcome(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = parse_instance(data)
    plain = charset in ("ISO_IR 100", "\\ISO 2022 IR 87")
    assert (parsed.header is not None) is plain


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", None), (" 7 ", 7), ("\\5", None), ("5\\6", 5), ("5.0", 5), ("+3", 3), ("x", None)],
)
def test_integer_columns(raw: str, expected: int | None) -> None:
    ds = make_instance()
    ds.InstanceNumber = None
    data = bytearray(to_bytes(ds))
    # Write the IS value by hand: pydicom would check or reformat it.
    at = data.index(b"\x20\x00\x13\x00IS\x00\x00")
    value = raw.encode() + (b" " if len(raw) % 2 else b"")
    data[at + 6 : at + 8] = struct.pack("<H", len(value))
    data[at + 8 : at + 8] = value
    outcome = _same_outcome(bytes(data))
    assert outcome[0] == "accepted"
    assert outcome[-1]["instance"]["instance_number"] == expected


def test_implicit_data_set_under_an_explicit_syntax_is_left_to_pydicom() -> None:
    ds = make_instance()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = to_bytes(ds)
    # Only the meta says Explicit VR (pydicom reads the meta elements one by one and
    # only logs a group length that does not match).
    data = implicit.replace(
        b"UI\x12\x00" + ImplicitVRLittleEndian.encode() + b"\x00",
        b"UI\x14\x00" + ExplicitVRLittleEndian.encode() + b"\x00",
    )
    assert data != implicit
    assert scan(implicit) is not None
    assert scan(data) is None
    _same_outcome(data)


def test_explicit_data_set_under_the_implicit_syntax_is_left_to_pydicom() -> None:
    explicit = to_bytes(make_instance())
    data = explicit.replace(
        b"UI\x14\x00" + ExplicitVRLittleEndian.encode() + b"\x00",
        b"UI\x12\x00" + ImplicitVRLittleEndian.encode() + b"\x00",
    )
    assert data != explicit
    assert scan(data) is None
    _same_outcome(data)


def test_item_whose_element_runs_past_its_length_is_left_to_pydicom() -> None:
    # pydicom goes on reading where the element ends, not where the item ends.
    data = bytearray(_nested_sequences())
    item = data.index(b"\x08\x00\x00\x01SH\x02\x00C1")  # the defined-length inner item
    meaning = data.index(b"\x08\x00\x04\x01LO", item)
    struct.pack_into("<H", data, meaning + 6, 40)
    assert scan(bytes(data)) is None
    _same_outcome(bytes(data))


def test_image_size_not_read_as_one_us_goes_through_pydicom() -> None:
    ds = make_instance()
    del ds.PixelData  # with pixel data, pydicom checks the whole instance
    data = bytearray(to_bytes(ds))
    at = data.index(b"\x28\x00\x10\x00US\x02\x00")
    data[at + 4 : at + 6] = b"SS"
    parsed = parse_instance(bytes(data))
    assert parsed.header is not None
    assert parsed.values["instance"]["rows"] == 64
    assert "dataset" in vars(parsed)
    _same_outcome(bytes(data))
