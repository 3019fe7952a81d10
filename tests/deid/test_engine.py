"""The engine on the marker corpus: nothing identifying survives, the trial keeps what it needs."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from ciams.deid import (
    Deidentifier,
    LeakDetectedError,
    NotDeidentifiedError,
    UnknownSubjectError,
    check_ingest,
    default_recipe,
    scan_for_leaks,
)
from ciams.deid.dates import age_string
from ciams.deid.profile import CLEAN, KEEP
from ciams.deid.synthetic import ct_series, marker_dataset

from .conftest import SECRET, recipe_with, roundtrip


def test_basic_profile_leaves_no_marker(basic_recipe) -> None:  # type: ignore[no-untyped-def]
    src, markers = marker_dataset()
    deid = Deidentifier(basic_recipe, {"MRN0001": "S-0001"}, SECRET, verify=False)
    result = deid.deidentify(roundtrip(src))
    assert result.data is not None
    assert markers.found_in(result.data) == {}


def test_default_recipe_keeps_only_retained(deid: Deidentifier) -> None:
    src, markers = marker_dataset()
    deid.verify = False
    result = deid.deidentify(roundtrip(src))
    assert result.data is not None
    prof = deid._base
    hits = markers.found_in(result.data)
    # cleaned descriptors keep no marker (tests/deid/test_clean.py); what is left is
    # what the recipe keeps on purpose (Retain Patient Characteristics)
    unexpected = {m: t for m, t in hits.items() if prof.actions.get(t) != KEEP}
    assert unexpected == {}
    assert all(prof.actions.get(t) != CLEAN for t in hits.values())
    assert b"DOE" not in result.data.upper().replace(b"DOES", b"")


def test_sex_and_age_retained_and_age_computed(deid: Deidentifier) -> None:
    ds = ct_series(1)[0]
    out = deid.deidentify(roundtrip(ds)).dataset
    assert out.PatientSex == "M"
    assert out.PatientAge == "058Y"  # born 1965-04-12, scanned 2024-03-05
    assert out.PatientName == "LOCAT-0001" and out.PatientID == "LOCAT-0001"
    assert out.PatientIdentityRemoved == "YES"
    assert "PatientBirthDate" not in out or not out.PatientBirthDate
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    assert {"113105", "113107", "113108"} <= codes
    assert "ciams-default v1.1" in out.DeidentificationMethod[0]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "InstitutionName" not in out or out.InstitutionName != "Springfield General Hospital"
    assert 0x00291010 not in out and 0x00290010 not in out  # private removed


def test_age_strings() -> None:
    assert age_string("20000229", "20240228") == "023Y"
    assert age_string("20240101", "20240301") == "002M"
    assert age_string("20240101", "20240115") == "014D"
    assert age_string("20240101", "20240201") == "004W"
    assert age_string(None, "20240101") is None


def test_uids_consistent_across_files_and_runs() -> None:
    series = ct_series(3)
    first = Deidentifier(None, {"MRN0001": "S1"}, SECRET)
    outs = [first.deidentify(roundtrip(ds)).dataset for ds in series]
    assert len({o.StudyInstanceUID for o in outs}) == 1
    assert len({o.SeriesInstanceUID for o in outs}) == 1
    assert len({o.SOPInstanceUID for o in outs}) == 3
    assert all(o.StudyInstanceUID != series[0].StudyInstanceUID for o in outs)
    # references point at the remapped instance
    assert outs[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID == outs[0].SOPInstanceUID
    assert (
        outs[0].FrameOfReferenceUID == outs[2].FrameOfReferenceUID != series[0].FrameOfReferenceUID
    )
    second = Deidentifier(None, {"MRN0001": "S1"}, SECRET)  # a separate run
    again = second.deidentify(roundtrip(series[2])).dataset
    assert again.SOPInstanceUID == outs[2].SOPInstanceUID
    other = Deidentifier(None, {"MRN0001": "S1"}, b"another-secret-xxxxxxxx")
    assert other.deidentify(roundtrip(series[2])).dataset.SOPInstanceUID != outs[2].SOPInstanceUID
    assert all(len(o.SOPInstanceUID) <= 64 and o.SOPInstanceUID.startswith("2.25.") for o in outs)


def test_dates_shift_consistently_per_subject(deid: Deidentifier) -> None:
    a = ct_series(1, patient_id="MRN0001")[0]
    b = ct_series(1, patient_id="MRN0001")[0]
    b.StudyDate = "20240405"  # a visit 31 days later
    oa, ob = deid.deidentify(roundtrip(a)).dataset, deid.deidentify(roundtrip(b)).dataset
    import datetime as dt

    def d(s: str) -> dt.date:
        return dt.date(int(s[:4]), int(s[4:6]), int(s[6:]))

    assert oa.StudyDate != "20240305"
    assert (d(ob.StudyDate) - d(oa.StudyDate)).days == 31


def test_unknown_subject_refused_or_generated() -> None:
    ds = ct_series(1, patient_id="NOT-IN-MAP")[0]
    with pytest.raises(UnknownSubjectError):
        Deidentifier(None, {}, SECRET).deidentify(roundtrip(ds))
    rec = recipe_with("profile: {options: []}\nsubjects: {unknown: generate, prefix: 'T1-'}\n")
    gen = Deidentifier(rec, {}, SECRET)
    out = gen.deidentify(roundtrip(ds))
    assert out.new_subject and out.subject_id.startswith("T1-")
    assert gen.new_subjects == {"NOT-IN-MAP": out.subject_id}
    assert Deidentifier(rec, {}, SECRET).deidentify(roundtrip(ds)).subject_id == out.subject_id


def test_file_name_is_generated(deid: Deidentifier) -> None:
    result = deid.deidentify(roundtrip(ct_series(1)[0]))
    assert result.filename == f"LOCAT-0001/{result.dataset.SOPInstanceUID}.dcm"


def test_scanner_rule_keeps_and_removes() -> None:
    rec = recipe_with(
        "profile: {options: [retain_patient_characteristics]}\n"
        "rules:\n"
        "  - name: acme-ct\n"
        "    match: {Manufacturer: 'ACME*', ManufacturerModelName: 'Scanner 3*'}\n"
        "    keep: [StationName]\n"
        "    remove: [KVP]\n"
        "  - name: other\n"
        "    match: {Manufacturer: 'OTHER'}\n"
        "    remove: [SliceThickness]\n"
    )
    result = Deidentifier(rec, {"MRN0001": "S1"}, SECRET).deidentify(roundtrip(ct_series(1)[0]))
    out = result.dataset
    assert result.rules == ["acme-ct"]
    assert out.StationName == "CTSTATION7" and "KVP" not in out and "SliceThickness" in out


def test_leak_guard_catches_identifier_in_kept_attribute(deid: Deidentifier) -> None:
    ds = ct_series(1)[0]
    ds.WindowCenterWidthExplanation = "WINDOW FOR DOE"  # a safe-listed attribute misused
    with pytest.raises(LeakDetectedError) as info:
        deid.deidentify(roundtrip(ds))
    assert any("WindowCenterWidthExplanation" in leak.where for leak in info.value.leaks)
    assert "DOE" not in str(info.value)  # the reason never repeats the value


def test_leak_guard_patterns(deid: Deidentifier) -> None:
    ds = ct_series(1)[0]
    ds.LUTExplanation = "call jdoe@example.org"
    with pytest.raises(LeakDetectedError) as info:
        deid.deidentify(roundtrip(ds))
    assert any(leak.kind == "pattern:email" for leak in info.value.leaks)


def test_scan_for_leaks_public_api(deid: Deidentifier) -> None:
    src = ct_series(1)[0]
    out = deid.deidentify(roundtrip(src)).dataset
    assert scan_for_leaks(src, out) == []
    out.ImageComments = "Springfield General Hospital"
    leaks = scan_for_leaks(src, out)
    assert [leak.where for leak in leaks] == ["(0020,4000) ImageComments"]


def test_check_ingest(deid: Deidentifier) -> None:
    src = ct_series(1)[0]
    with pytest.raises(NotDeidentifiedError) as info:
        check_ingest(roundtrip(src), default_recipe())
    reasons = " ".join(info.value.reasons)
    assert "Patient Identity Removed" in reasons and "subject code" in reasons
    assert "InstitutionAddress" in reasons and "private" in reasons
    out = deid.deidentify(roundtrip(src)).dataset
    check_ingest(out, default_recipe())
    out.OtherPatientIDs = "X123456"
    with pytest.raises(NotDeidentifiedError):
        check_ingest(out, default_recipe())


def test_sequences_are_cleaned_recursively(deid: Deidentifier) -> None:
    ds = ct_series(1)[0]
    item = Dataset()
    item.PatientName = "DOE^JOHN"
    item.InstitutionAddress = "1 Hospital Road"
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SourceImageSequence = [item]
    out = deid.deidentify(roundtrip(ds)).dataset
    nested = out.SourceImageSequence[0]
    assert "InstitutionAddress" not in nested
    assert nested.PatientName == "LOCAT-0001"
    assert nested.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert nested.ReferencedSOPInstanceUID != "1.2.3.4.5"


def test_missing_patient_id_is_refused_even_when_generating() -> None:
    ds = ct_series(1)[0]
    del ds.PatientID
    rec = recipe_with("profile: {options: []}\nsubjects: {unknown: generate}\n")
    with pytest.raises(UnknownSubjectError, match="no Patient ID"):
        Deidentifier(rec, {}, SECRET).deidentify(roundtrip(ds))


def test_docstring_examples() -> None:
    import doctest

    import ciams.deid.engine

    failures, tests = doctest.testmod(ciams.deid.engine)
    assert tests > 0 and failures == 0
