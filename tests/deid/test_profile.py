"""The generated Annex E table and its compilation into actions (PS3.15 E.1-1, E.3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom._dicom_dict import DicomDictionary
from pydicom.datadict import tag_for_keyword

from ciams.deid._standard import annex_e
from ciams.deid._standard.generate import DEFAULT_INPUT, generate
from ciams.deid.errors import RecipeError
from ciams.deid.profile import (
    CLEAN,
    DUMMY,
    DUMMY_SQ,
    EMPTY,
    KEEP,
    RECURSE,
    REMOVE,
    SHIFT,
    SUBJECT,
    UID,
    Option,
    compile_profile,
)
from ciams.deid.safe import CLEANED_TEXT_KEYWORDS, SAFE_TEXT_KEYWORDS


def tag(keyword: str) -> int:
    found = tag_for_keyword(keyword)
    assert found is not None
    return int(found)


@pytest.mark.skipif(not DEFAULT_INPUT.exists(), reason="shared standard data not present")
def test_generated_table_is_current() -> None:
    generated = generate(DEFAULT_INPUT)
    current = (Path(annex_e.__file__)).read_text(encoding="utf-8")
    assert generated == current, "run python src/ciams/deid/_standard/generate.py"


def test_table_is_complete() -> None:
    assert annex_e.EDITION == "2024b"
    assert len(annex_e.ATTRIBUTES) + len(annex_e.GROUPS) + 1 == annex_e.ROW_COUNT == 621


def test_every_row_compiles_for_every_option() -> None:
    for opt in Option:
        if opt == Option.RETAIN_LONG_FULL_DATES:
            prof = compile_profile([opt])
        else:
            prof = compile_profile([opt, Option.RETAIN_PATIENT_CHARACTERISTICS])
        for t in annex_e.ATTRIBUTES:
            assert t in prof.actions


def test_basic_profile_actions() -> None:
    prof = compile_profile([])
    a = prof.actions
    assert a[tag("PatientName")] == SUBJECT
    assert a[tag("PatientBirthDate")] == EMPTY  # Z
    assert a[tag("PatientSex")] == EMPTY  # Z without Retain Patient Characteristics
    assert a[tag("PatientAge")] == REMOVE  # X
    assert a[tag("InstitutionName")] == DUMMY  # X/Z/D -> D
    assert a[tag("AccessionNumber")] == EMPTY
    assert a[tag("SOPInstanceUID")] == UID
    assert a[tag("ReferencedImageSequence")] == RECURSE  # X/Z/U*
    assert a[tag("StudyDate")] == EMPTY
    assert a[tag("SeriesDescription")] == REMOVE
    assert a[tag("PersonIdentificationCodeSequence")] == DUMMY_SQ
    assert a[tag("Manufacturer")] == KEEP  # not in the table, on the safe list
    assert a[tag("Rows")] == KEEP  # non-text VR not in the table
    assert a[tag("SOPClassUID")] == KEEP  # class UIDs are not instance identifiers
    assert a[tag("TextValue")] == DUMMY  # free text in structured content: dummy (Type 1C)
    # free text not in the table and not known to be safe: removed (whitelist)
    unknown_text = [
        t
        for t, (vr, *_r, kw) in DicomDictionary.items()
        if vr in ("LT", "ST", "UT")
        and t not in annex_e.ATTRIBUTES
        and kw not in SAFE_TEXT_KEYWORDS | CLEANED_TEXT_KEYWORDS
        and t not in (tag("TextValue"), tag("UnformattedTextValue"))
    ]
    assert len(unknown_text) > 20
    assert all(t not in a for t in unknown_text)
    assert prof.action(0x00291010) == REMOVE  # private
    assert prof.action(0x60003000) == REMOVE  # overlay
    assert prof.action(0x50003000) == REMOVE  # curve


def test_options_override_basic() -> None:
    prof = compile_profile(
        [
            Option.RETAIN_PATIENT_CHARACTERISTICS,
            Option.RETAIN_LONG_MODIFIED_DATES,
            Option.CLEAN_DESCRIPTORS,
            Option.RETAIN_UIDS,
            Option.RETAIN_DEVICE_IDENTITY,
            Option.RETAIN_INSTITUTION_IDENTITY,
        ]
    )
    a = prof.actions
    assert a[tag("PatientSex")] == KEEP
    assert a[tag("StudyDate")] == SHIFT
    assert a[tag("SeriesDescription")] == CLEAN
    assert a[tag("SOPInstanceUID")] == KEEP
    assert a[tag("StationName")] == KEEP
    assert a[tag("InstitutionName")] == KEEP
    # binary values cannot be cleaned: C falls back to the Basic Profile action
    assert a[tag("MakerNote")] == REMOVE
    assert a[tag("FrameOriginTimestamp")] == DUMMY
    full = compile_profile([Option.RETAIN_LONG_FULL_DATES]).actions
    assert full[tag("StudyDate")] == KEEP


def test_recipe_keep_and_remove() -> None:
    prof = compile_profile([], keep=["StationName"], remove=["Manufacturer", "(0018,0050)"])
    assert prof.actions[tag("StationName")] == KEEP
    assert prof.actions[tag("Manufacturer")] == REMOVE
    assert prof.actions[0x00180050] == REMOVE
    assert tag("StationName") not in prof.identifying


def test_conflicting_date_options_refused() -> None:
    with pytest.raises(RecipeError):
        compile_profile([Option.RETAIN_LONG_FULL_DATES, Option.RETAIN_LONG_MODIFIED_DATES])
    with pytest.raises(RecipeError):
        compile_profile([], keep=["NoSuchKeyword"])


def test_generated_dictionary_is_current() -> None:
    from ciams.deid._standard import dictionary
    from ciams.deid._standard.generate import generate_dictionary

    assert Path(dictionary.__file__).read_text(encoding="utf-8") == generate_dictionary()


def test_command_starts_without_pydicom() -> None:
    """The byte path needs neither pydicom nor numpy: ``ciams deid`` starts faster."""
    import subprocess
    import sys

    code = "import sys, ciams.deid.cli; print('pydicom' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
