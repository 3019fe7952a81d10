"""pydicom's vendor files as real-world input; dciodvfy finds no new errors (PS3.15 E.1.1)."""

from __future__ import annotations

import io
import re
import subprocess
import warnings
from pathlib import Path

import pydicom
import pydicom.data
import pytest

from ciams.deid import Deidentifier, check_ingest, recipe_with_defaults, scan_for_leaks

from .conftest import SECRET, requires_dciodvfy

_SKIP = (
    "truncated",
    "bad_sequence",
    "nested_priv_SQ",
    "UN_sequence",
    "no_meta",
    "rtplan_truncated",
)


def _vendor_files() -> list[str]:
    out = []
    # the files shipped inside pydicom (no download: the test must run offline)
    local = Path(pydicom.data.__file__).parent / "test_files"
    for path in sorted(str(p) for p in local.glob("*.dcm")):
        if any(s in path for s in _SKIP):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
        if "SOPClassUID" in ds and "SOPInstanceUID" in ds:
            out.append(path)
    return out


VENDOR = _vendor_files()
RECIPE = recipe_with_defaults({"subjects": {"unknown": "generate"}, "pixels": {"ocr": "never"}})


def _deid(path: str) -> tuple[pydicom.Dataset, bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = pydicom.dcmread(path)
        # instances without a Patient ID are refused (tested below); map them here
        subjects = {} if str(src.get("PatientID", "")).strip() else {"": "NOID-1"}
        result = Deidentifier(RECIPE, subjects, SECRET).deidentify(pydicom.dcmread(path))
    assert result.data is not None
    return src, result.data


def test_enough_vendor_files() -> None:
    assert len(VENDOR) >= 40


@pytest.mark.parametrize("path", VENDOR, ids=[Path(p).name for p in VENDOR])
def test_vendor_file_deidentified_without_leaks(path: str) -> None:
    src, data = _deid(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = pydicom.dcmread(io.BytesIO(data))
    assert out.PatientIdentityRemoved == "YES"
    assert scan_for_leaks(src, out, RECIPE) == []
    check_ingest(out, RECIPE)
    name = str(src.get("PatientName", "")).strip()
    if len(name) >= 4 and name.upper() not in ("ANONYMIZED", "ANONYMOUS"):
        assert name.encode() not in data


def _errors(path: Path) -> set[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = {line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")}
    # the same error about a remapped UID or a shifted value is not a new error
    return {re.sub(r"[0-9][0-9.]*", "#", line) for line in lines}


@requires_dciodvfy
@pytest.mark.parametrize("path", VENDOR[::2], ids=[Path(p).name for p in VENDOR[::2]])
def test_dciodvfy_reports_no_new_errors(path: str, tmp_path: Path) -> None:
    _, data = _deid(path)
    out = tmp_path / "out.dcm"
    out.write_bytes(data)
    new = _errors(out) - _errors(Path(path))
    assert new == set()
