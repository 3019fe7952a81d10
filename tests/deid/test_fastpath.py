"""The byte-level fast path gives exactly the bytes of the dataset path (or declines)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom.data
import pytest

from ciams.deid import Deidentifier, LeakDetectedError, default_recipe, recipe_with_defaults
from ciams.deid.fastpath import FileRange
from ciams.deid.reader import read_fast
from ciams.deid.synthetic import ct_series, marker_dataset
from ciams.deid.writer import serialize

from .conftest import SECRET

RECIPES = {
    "default": recipe_with_defaults(
        {"subjects": {"unknown": "generate"}, "pixels": {"ocr": "never"}}
    ),
    "basic": recipe_with_defaults(
        {
            "profile": {"options": []},
            "subjects": {"unknown": "generate"},
            "pixels": {"ocr": "never"},
        }
    ),
    "retain-all": recipe_with_defaults(
        {
            "profile": {
                "options": [
                    "retain_uids",
                    "retain_device_identity",
                    "retain_institution_identity",
                    "retain_long_full_dates",
                    "clean_structured_content",
                    "clean_graphics",
                ]
            },
            "subjects": {"unknown": "generate"},
            "pixels": {"ocr": "never"},
        }
    ),
}


def _inputs() -> list[tuple[str, bytes]]:
    local = Path(pydicom.data.__file__).parent / "test_files"
    items = [(p.name, p.read_bytes()) for p in sorted(local.glob("*.dcm"))]
    marker, _ = marker_dataset(private=False, overlays=False)
    items.append(("markers", serialize(marker)))
    items += [(f"ct{i}", serialize(ds)) for i, ds in enumerate(ct_series(2))]
    return items


INPUTS = _inputs()


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_fast_path_equals_dataset_path(recipe: str) -> None:
    accepted = 0
    for name, data in INPUTS:
        fast_engine = Deidentifier(RECIPES[recipe], {"": "NOID-1"}, SECRET, verify=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = fast_engine._fast.run(data)
            if fast is None:
                continue
            accepted += 1
            slow = Deidentifier(RECIPES[recipe], {"": "NOID-1"}, SECRET, verify=False).deidentify(
                read_fast(data)
            )
        assert not isinstance(fast.pixel, FileRange)
        assert fast.header + fast.pixel == slow.data, name
        assert fast[2] == slow.filename
    assert accepted >= 40


def test_fast_path_leak_guard() -> None:
    ds = ct_series(1)[0]
    ds.WindowCenterWidthExplanation = "WINDOW FOR DOE"
    deid = Deidentifier(None, {"MRN0001": "S1"}, SECRET)
    with pytest.raises(LeakDetectedError) as info:
        deid.deidentify_bytes(serialize(ds))
    assert any("WindowCenterWidthExplanation" in leak.where for leak in info.value.leaks)
    result = Deidentifier(None, {"MRN0001": "S1"}, SECRET).deidentify_bytes(
        serialize(ct_series(1)[0])
    )
    assert result.dataset.PatientName == "S1"


def test_fast_path_patterns() -> None:
    ds = ct_series(1)[0]
    ds.LUTExplanation = "call jdoe@example.org"
    deid = Deidentifier(None, {"MRN0001": "S1"}, SECRET)
    with pytest.raises(LeakDetectedError) as info:
        deid.deidentify_bytes(serialize(ds))
    assert any(leak.kind == "pattern:email" for leak in info.value.leaks)
    assert info.value.result._dataset is not None  # type: ignore[attr-defined]


def test_file_to_file_copy_of_large_pixel_data(tmp_path: Path) -> None:
    from ciams.deid.batch import run_batch
    from ciams.deid.fastpath import FileRange

    src = tmp_path / "in"
    src.mkdir()
    series = ct_series(2, rows=256, cols=256)  # 128 KiB of pixels: beyond the first read
    for i, ds in enumerate(series):
        (src / f"{i}.dcm").write_bytes(serialize(ds))
    deid = Deidentifier(None, {"MRN0001": "S1"}, SECRET)
    by_file = deid.deidentify_file(str(src / "0.dcm"))
    assert by_file.parts is not None and isinstance(by_file.parts[1], FileRange)
    expected = Deidentifier(None, {"MRN0001": "S1"}, SECRET).deidentify_bytes(
        (src / "0.dcm").read_bytes()
    )
    assert by_file.data == expected.data
    out = tmp_path / "out"
    summary = run_batch(src, out, default_recipe(), {"MRN0001": "S1"}, SECRET, jobs=1)
    assert summary.count("deidentified") == 2
    written = out / expected.filename
    assert written.read_bytes() == expected.data
    assert read_fast(written.read_bytes()).pixel_array.shape == (256, 256)
