"""The C action on text (Clean Descriptors): only values made of safe vocabulary survive."""

from __future__ import annotations

import io
import re

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset

from ciams.deid import Deidentifier, default_recipe
from ciams.deid._standard import annex_e
from ciams.deid.errors import RecipeError
from ciams.deid.leaks import _PREFILTERS, DEFAULT_PATTERNS
from ciams.deid.profile import CLEAN, Option, compile_profile
from ciams.deid.safe import clean_text
from ciams.deid.synthetic import MARKER_RE, ct_series, marker_dataset
from ciams.deid.writer import serialize

from .conftest import SECRET, recipe_with, roundtrip


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


RECIPE = default_recipe()
PROFILE = compile_profile(RECIPE.options)
#: attributes the default recipe keeps on purpose (Retain Patient Characteristics)
RETAINED = {
    t
    for t, (_kw, _vr, _basic, per_option) in annex_e.ATTRIBUTES.items()
    if per_option.get(Option.RETAIN_PATIENT_CHARACTERISTICS) == "K"
}
CLEANED_TEXT = sorted(
    t
    for t, (_kw, vr, *_r) in annex_e.ATTRIBUTES.items()
    if PROFILE.actions.get(t) == CLEAN and vr in ("LO", "SH", "ST", "LT", "UT", "CS")
)


@pytest.mark.parametrize(
    "text",
    [
        "AX T1 POST GD",
        "PORTAL VENOUS 2mm",
        "CT CHEST W/O CONTRAST",
        "Sag T2 FLAIR fs",
        "CHEST 1.25mm STANDARD",
        "DWI b1000 ADC",
        "L-SPINE SAG T2",
        "Head^Neck",
        "+0100",
    ],
)
def test_vocabulary_values_survive(text: str) -> None:
    assert clean_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "ZQ0001",
        "AX T1 ZQ0001",
        "CT ABDOMEN SMITH",
        "Dr House",
        "allergic to penicillin",
        "CHEST 2024-03-05",
        "CHEST 12345678",
        "call john@example.org",
        "Müller",
        "T1 P123456",
    ],
)
def test_anything_else_is_emptied(text: str) -> None:
    assert clean_text(text) == ""


def test_source_identifiers_empty_a_vocabulary_value() -> None:
    # a patient called "Chest" is rare, but then the word is not kept
    assert clean_text("CHEST CT", {b"chest": (0x00100010, True)}) == ""
    assert clean_text("CHEST CT", {b"ches": (0x00100010, True)}) == "CHEST CT"


def _with_descriptors(values: dict[int, str]) -> Dataset:
    ds = ct_series(1)[0]
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.SourceImageSequence = [item]
    for i, (tag, value) in enumerate(values.items()):
        target = item if i % 3 == 0 else ds  # some inside a kept sequence
        target.add_new(tag, annex_e.ATTRIBUTES[tag][1], value)
    return ds


def test_no_marker_survives_cleaning_on_both_paths() -> None:
    values = {tag: f"AX T1 ZQ{i:04d} POST" for i, tag in enumerate(CLEANED_TEXT)}
    values[0x0008103E] = "SERIES ZQ9999"  # Series Description
    data = serialize(_with_descriptors(values))
    deid = Deidentifier(RECIPE, {"MRN0001": "S-1"}, SECRET, verify=False)
    fast = deid.deidentify_bytes(data)
    assert fast._dataset is None  # the byte-level fast path
    slow = Deidentifier(RECIPE, {"MRN0001": "S-1"}, SECRET, verify=False).deidentify(_read(data))
    assert slow.data == fast.data
    assert fast.data is not None
    assert MARKER_RE.findall(fast.data) == []


def test_a_normal_descriptor_survives_on_both_paths() -> None:
    values = {0x0008103E: "AX T1 POST GD", 0x00081030: "CT ABDOMEN DOE", 0x00181030: "ROUTINE"}
    data = serialize(_with_descriptors(values))
    fast = Deidentifier(RECIPE, {"MRN0001": "S-1"}, SECRET).deidentify_bytes(data)
    assert fast._dataset is None
    out = fast.dataset
    slow = Deidentifier(RECIPE, {"MRN0001": "S-1"}, SECRET).deidentify(_read(data))
    assert out.ProtocolName == "ROUTINE"
    assert out.SourceImageSequence[0].SeriesDescription == "AX T1 POST GD"
    assert not out.StudyDescription  # "DOE" is the patient's name: the value goes
    assert "StudyDescription" in out  # emptied, not removed (Type 2 in most IODs)
    assert slow.data == fast.data


def test_default_recipe_leaks_no_marker_except_retained_characteristics() -> None:
    src, markers = marker_dataset()
    deid = Deidentifier(RECIPE, {"MRN0001": "S-0001"}, SECRET, verify=False)
    result = deid.deidentify(roundtrip(src))
    assert result.data is not None
    hits = markers.found_in(result.data)
    leaked = {m: f"{t:08X}" for m, t in hits.items() if t not in RETAINED}
    assert leaked == {}
    # what Retain Patient Characteristics keeps is all that is left
    assert set(hits.values()) <= RETAINED


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789 -()+.@abcxyz", min_size=1, max_size=40))
def test_leak_prefilters_are_necessary_conditions(text: str) -> None:
    # the leak guard searches a built-in pattern only where its prefilter matches
    data = text.encode()
    for name, pattern in DEFAULT_PATTERNS.items():
        if re.search(pattern.encode(), data):
            assert re.search(_PREFILTERS[name].encode(), data), (name, text)


def test_recipe_vocabulary_adds_words() -> None:
    values = {0x0008103E: "ONCOSTUDY42 BASELINE CT"}
    data = serialize(_with_descriptors(values))
    default = Deidentifier(RECIPE, {"MRN0001": "S-1"}, SECRET).deidentify_bytes(data)
    assert not default.dataset.SourceImageSequence[0].SeriesDescription
    trial = recipe_with(
        "profile: {options: [clean_descriptors]}\nvocabulary: [oncostudy42, Baseline]\n"
    )
    for result in (
        Deidentifier(trial, {"MRN0001": "S-1"}, SECRET).deidentify_bytes(data),
        Deidentifier(trial, {"MRN0001": "S-1"}, SECRET).deidentify(_read(data)),
    ):
        item = result.dataset.SourceImageSequence[0]
        assert item.SeriesDescription == "ONCOSTUDY42 BASELINE CT"


@pytest.mark.parametrize("bad", ["[two words]", "[a-b]", "oncostudy"])
def test_recipe_vocabulary_must_be_words(bad: str) -> None:
    with pytest.raises(RecipeError):
        recipe_with(f"profile: {{options: []}}\nvocabulary: {bad}\n")
