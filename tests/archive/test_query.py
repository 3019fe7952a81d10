"""Matching semantics of the shared query engine (PS3.4 C.2.2.2)."""

from __future__ import annotations

import pytest

from ciams.archive import Archive, FindQuery
from ciams.errors import InvalidRequestError
from tests.corpus import make_instance, to_bytes


@pytest.fixture
def filled(archive: Archive) -> Archive:
    specs = [
        ("P1", "Smith^John", "20240110", "083000", "CT", "ACC1"),
        ("P1", "Smith^John", "20240220", "120000", "MR", "ACC2"),
        ("P2", "Smythe^Anna", "20230505", "235959.5", "CT", "ACC3"),
        ("P3", "Jones^Bob", "20220101", "000000", "MR", "ACC4"),
    ]
    for pid, name, date, time, modality, acc in specs:
        for n in range(1, 3):
            ds = make_instance(
                patient_id=pid,
                patient_name=name,
                study_date=date,
                study_time=time,
                modality=modality,
                accession=acc,
                rows=8,
                columns=8,
                instance_number=n,
            )
            ds.StudyInstanceUID = f"1.2.3.{acc[-1]}"
            ds.SeriesInstanceUID = f"1.2.3.{acc[-1]}.1"
            assert archive.ingest(to_bytes(ds)).ok
    return archive


def _acc(archive: Archive, **filters: str) -> list[str]:
    found = archive.find(FindQuery("STUDY", filters, ["AccessionNumber"]))
    return sorted(str(ds.AccessionNumber) for ds in found)


def test_universal_and_single_value(filled: Archive) -> None:
    assert _acc(filled) == ["ACC1", "ACC2", "ACC3", "ACC4"]
    assert _acc(filled, PatientID="P1") == ["ACC1", "ACC2"]
    assert _acc(filled, PatientID="p1") == []  # case-sensitive for LO


def test_wildcards(filled: Archive) -> None:
    assert _acc(filled, PatientName="Sm*") == ["ACC1", "ACC2", "ACC3"]
    assert _acc(filled, PatientName="sm?th^*") == ["ACC1", "ACC2"]  # PN case-insensitive
    assert _acc(filled, AccessionNumber="ACC?") == ["ACC1", "ACC2", "ACC3", "ACC4"]
    assert _acc(filled, AccessionNumber="AC_1") == []  # '_' is literal, not a wildcard


def test_date_and_time_ranges(filled: Archive) -> None:
    assert _acc(filled, StudyDate="20240101-20241231") == ["ACC1", "ACC2"]
    assert _acc(filled, StudyDate="-20230505") == ["ACC3", "ACC4"]
    assert _acc(filled, StudyDate="20230506-") == ["ACC1", "ACC2"]
    assert _acc(filled, StudyTime="0800-1200") == ["ACC1", "ACC2"]
    assert _acc(filled, StudyTime="2359-") == ["ACC3"]


def test_uid_list_and_modalities(filled: Archive) -> None:
    assert _acc(filled, StudyInstanceUID="1.2.3.1\\1.2.3.4") == ["ACC1", "ACC4"]
    assert _acc(filled, ModalitiesInStudy="MR") == ["ACC2", "ACC4"]
    assert _acc(filled, ModalitiesInStudy="CT\\MR") == ["ACC1", "ACC2", "ACC3", "ACC4"]


def test_levels_and_counts(filled: Archive) -> None:
    patients = filled.find(
        FindQuery(
            "PATIENT",
            {"PatientID": "P1"},
            ["PatientID", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances"],
        )
    )
    assert len(patients) == 1
    assert patients[0].NumberOfPatientRelatedStudies == 2
    assert patients[0].NumberOfPatientRelatedInstances == 4
    series = filled.find(
        FindQuery(
            "SERIES",
            {"StudyInstanceUID": "1.2.3.3"},
            ["SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances"],
        )
    )
    assert [(s.Modality, s.NumberOfSeriesRelatedInstances) for s in series] == [("CT", 2)]
    images = filled.find(
        FindQuery(
            "IMAGE",
            {"SeriesInstanceUID": "1.2.3.3.1", "InstanceNumber": "2"},
            ["SOPInstanceUID", "InstanceNumber", "Rows", "SliceThickness"],
        )
    )
    assert len(images) == 1
    assert images[0].Rows == 8
    assert float(images[0].SliceThickness) == 5.0  # not indexed: read from the file


def test_limit_offset(filled: Archive) -> None:
    all_ = filled.find(FindQuery("STUDY", {}, ["AccessionNumber"]))
    page = filled.find(FindQuery("STUDY", {}, ["AccessionNumber"], limit=2, offset=1))
    assert [d.AccessionNumber for d in page] == [d.AccessionNumber for d in all_[1:3]]


def test_bad_keys(filled: Archive) -> None:
    with pytest.raises(InvalidRequestError):
        filled.find(FindQuery("STUDY", {"NoSuchKeyword": "x"}, []))
    with pytest.raises(InvalidRequestError):
        filled.find(FindQuery("STUDY", {"SOPInstanceUID": "1.2"}, []))


def test_scope_limits_every_read(archive: Archive) -> None:
    from ciams.archive import Scope

    a = make_instance(patient_id="SHARED", rows=8, columns=8)
    b = make_instance(patient_id="SHARED", rows=8, columns=8)
    assert archive.ingest(to_bytes(a), {"trial": "T1", "site": "S1", "scoped": "1"}).ok
    assert archive.ingest(to_bytes(b), {"trial": "T1", "site": "S2", "scoped": "1"}).ok
    s1 = Scope((("T1", "S1"),))
    trial = Scope((("T1", ""),))
    nobody = Scope(())

    def uids(scope: Scope) -> list[str]:
        query = FindQuery("STUDY", {}, ["StudyInstanceUID"])
        return sorted(str(d.StudyInstanceUID) for d in archive.find(query, scope=scope))

    assert uids(s1) == [a.StudyInstanceUID]
    assert uids(trial) == sorted([a.StudyInstanceUID, b.StudyInstanceUID])
    assert uids(nobody) == []
    patients = archive.find(
        FindQuery("PATIENT", {}, ["PatientID", "NumberOfPatientRelatedStudies"]), scope=s1
    )
    assert [(p.PatientID, p.NumberOfPatientRelatedStudies) for p in patients] == [("SHARED", 1)]
    assert archive.instances(b.StudyInstanceUID, scope=s1) == []
    assert len(archive.instances(b.StudyInstanceUID, scope=trial)) == 1


def test_scoped_sender_cannot_add_to_another_sites_study(archive: Archive) -> None:
    first = make_instance(rows=8, columns=8)
    assert archive.ingest(to_bytes(first), {"trial": "T1", "site": "S1", "scoped": "1"}).ok
    intruder = make_instance(rows=8, columns=8, study_uid=str(first.StudyInstanceUID))
    result = archive.ingest(to_bytes(intruder), {"trial": "T1", "site": "S2", "scoped": "1"})
    assert result.status == "rejected" and result.error is not None
    assert result.error.http_status == 403
    assert len(archive.instances(str(first.StudyInstanceUID))) == 1
