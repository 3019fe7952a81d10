"""Index values read from undecoded bytes agree with pydicom's own value conversion."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import FileDataset

from ciams.archive.parse import identify, parse_instance
from ciams.errors import InvalidInstanceError
from tests.corpus import make_instance, to_bytes


def _files() -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted(get_testdata_files("*.dcm"))


def _converted(data: bytes) -> FileDataset:
    ds = pydicom.dcmread(BytesIO(data))
    for _ in ds:  # iterating converts every raw element
        pass
    return ds


def test_raw_index_values_match_converted_values_on_vendor_files() -> None:
    compared = 0
    for name in _files():
        data = Path(name).read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                parsed = parse_instance(data)
            except InvalidInstanceError:
                continue
            fast = parsed.index_values()
            # The pydicom path, from the raw elements and then from converted ones.
            parsed = parse_instance(data, fast=False)
            raw = parsed.index_values()
            parsed.dataset = _converted(data)
            slow = parsed.index_values()
        assert fast == raw == slow, name
        compared += 1
    assert compared >= 40


@pytest.mark.parametrize(
    ("name", "charset"),
    [("Yamada^Tarou=山田^太郎=やまだ^たろう", "ISO 2022 IR 87"), ("Müller^Jörg", "ISO_IR 100")],
)
def test_non_ascii_names_are_decoded_by_pydicom(name: str, charset: str) -> None:
    ds = make_instance(patient_name=name)
    ds.SpecificCharacterSet = ["", charset] if "IR 87" in charset else charset
    ds.StudyDescription = "Étude ÄÖÜ" if "100" in charset else "ascii only"
    ds.InstanceNumber = " 7 "
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    parsed = parse_instance(buf.getvalue())
    assert parsed.header is not None
    values = parsed.index_values()
    assert values["patient"]["patient_name"] == name
    assert values["instance"]["instance_number"] == 7
    # Non-ASCII values needed pydicom's conversion, on the data set read on demand.
    assert "dataset" in vars(parsed)
    parsed = parse_instance(buf.getvalue(), fast=False)
    parsed.dataset = _converted(buf.getvalue())
    assert parsed.index_values() == values


def test_identify_reads_the_uids_of_refused_input() -> None:
    ds = make_instance()
    data = to_bytes(ds)
    whole = {
        "sop_instance_uid": ds.SOPInstanceUID,
        "sop_class_uid": ds.SOPClassUID,
        "study_instance_uid": ds.StudyInstanceUID,
        "series_instance_uid": ds.SeriesInstanceUID,
    }
    assert identify(data) == whole
    assert identify(data[: len(data) // 2]) == whole  # cut inside Pixel Data
    assert identify(b"not DICOM at all") == {}
    assert identify(b"") == {}
    ds.SOPInstanceUID = "1.2.bad uid"
    assert identify(to_bytes(ds)) == {k: v for k, v in whole.items() if k != "sop_instance_uid"}
