"""C-FIND SCP (PS3.4 C.4.1), Patient Root and Study Root, against dcmtk findscu."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ciams.access import AuditTrail
from tests.corpus import make_instance, to_bytes
from tests.net.conftest import DicomNode, dcmtk

pytestmark = pytest.mark.dcmtk  # real dcmtk peers as subprocesses


@dataclass
class Corpus:
    """Two patients, three studies, four series, eight instances."""

    studies: dict[str, str]  # name -> StudyInstanceUID
    series: dict[str, str]  # name -> SeriesInstanceUID
    sops: dict[str, list[str]]  # series name -> SOP Instance UIDs


@pytest.fixture
def corpus(node: DicomNode) -> Corpus:
    studies = {name: str(generate_uid()) for name in ("S1", "S2", "S3")}
    series = {name: str(generate_uid()) for name in ("S1CT1", "S1CT2", "S2MR", "S3CT")}
    layout = [
        # series, study, count, modality, patient id, name, date, accession
        ("S1CT1", "S1", 3, "CT", "PAT001", "Doe^Jane", "20240115", "ACC1"),
        ("S1CT2", "S1", 2, "CT", "PAT001", "Doe^Jane", "20240115", "ACC1"),
        ("S2MR", "S2", 2, "MR", "PAT001", "Doe^Jane", "20240301", "ACC2"),
        ("S3CT", "S3", 1, "CT", "PAT002", "Müller^Hans", "20230610", "ACC3"),
    ]
    sops: dict[str, list[str]] = {}
    for name, study, count, modality, pid, pname, date, acc in layout:
        sops[name] = []
        for n in range(1, count + 1):
            ds = make_instance(
                modality=modality,
                patient_id=pid,
                patient_name=pname,
                study_uid=studies[study],
                series_uid=series[name],
                instance_number=n,
                study_date=date,
                accession=acc,
                series_number=len(sops),
                rows=16,
                columns=16,
            )
            result = node.archive.ingest(to_bytes(ds), {"interface": "import"})
            assert result.ok, result.reason
            sops[name].append(ds.SOPInstanceUID)
    return Corpus(studies, series, sops)


def findscu(
    node: DicomNode, tmp_path: Path, model: str, *keys: str, extra: tuple[str, ...] = ()
) -> tuple[list[Dataset], str]:
    """Run findscu (-P patient root, -S study root); return the extracted responses."""
    out = tmp_path / f"find-{len(list(tmp_path.glob('find-*')))}"
    out.mkdir()
    args: list[str] = ["findscu", "-v", model, "-X", "-od", str(out), *extra]
    for key in keys:
        args += ["-k", key]
    result = dcmtk(*args, "-aec", node.ae_title, "127.0.0.1", str(node.dicom_port), cwd=out)
    responses: list[Dataset] = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return responses, result.stdout + result.stderr


def values(responses: list[Dataset], keyword: str) -> set[str]:
    return {str(ds.get(keyword)) for ds in responses}


def test_patient_level_wildcard_and_universal(
    node: DicomNode, corpus: Corpus, tmp_path: Path
) -> None:
    found, log = findscu(
        node,
        tmp_path,
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "PatientName=doe*",
        "PatientID",
        "NumberOfPatientRelatedStudies",
    )
    assert values(found, "PatientID") == {"PAT001"}, log
    (match,) = found
    assert match.QueryRetrieveLevel == "PATIENT"
    assert match.NumberOfPatientRelatedStudies == 2
    assert str(match.PatientName) == "Doe^Jane"

    everyone, log = findscu(node, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientID")
    assert values(everyone, "PatientID") == {"PAT001", "PAT002"}, log


def test_study_level_date_ranges(node: DicomNode, corpus: Corpus, tmp_path: Path) -> None:
    keys = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "ModalitiesInStudy")
    in_2024, log = findscu(node, tmp_path, "-S", *keys, "StudyDate=20240101-20241231")
    assert values(in_2024, "StudyInstanceUID") == {corpus.studies["S1"], corpus.studies["S2"]}, log
    before, _ = findscu(node, tmp_path, "-S", *keys, "StudyDate=-20231231")
    assert values(before, "StudyInstanceUID") == {corpus.studies["S3"]}
    after, _ = findscu(node, tmp_path, "-S", *keys, "StudyDate=20240201-")
    assert values(after, "StudyInstanceUID") == {corpus.studies["S2"]}
    (s2,) = after
    assert list(s2.ModalitiesInStudy) == ["MR"] or s2.ModalitiesInStudy == "MR"
    # A requested key that matched nothing comes back present and empty.
    assert "StudyDate" in s2 and s2.StudyDate == "20240301"


def test_study_level_in_patient_root(node: DicomNode, corpus: Corpus, tmp_path: Path) -> None:
    found, log = findscu(
        node,
        tmp_path,
        "-P",
        "QueryRetrieveLevel=STUDY",
        "PatientID=PAT001",
        "StudyInstanceUID",
        "AccessionNumber",
        "NumberOfStudyRelatedInstances",
    )
    assert values(found, "StudyInstanceUID") == {corpus.studies["S1"], corpus.studies["S2"]}, log
    counts = {str(ds.StudyInstanceUID): int(ds.NumberOfStudyRelatedInstances) for ds in found}
    assert counts == {corpus.studies["S1"]: 5, corpus.studies["S2"]: 2}
    single, _ = findscu(
        node, tmp_path, "-P", "QueryRetrieveLevel=STUDY", "AccessionNumber=ACC3", "StudyInstanceUID"
    )
    assert values(single, "StudyInstanceUID") == {corpus.studies["S3"]}


@pytest.mark.parametrize("model", ["-P", "-S"])
def test_series_level_uid_list(node: DicomNode, corpus: Corpus, tmp_path: Path, model: str) -> None:
    wanted = [corpus.series["S1CT2"], corpus.series["S3CT"]]
    found, log = findscu(
        node,
        tmp_path,
        model,
        "QueryRetrieveLevel=SERIES",
        "SeriesInstanceUID=" + "\\".join(wanted),
        "Modality",
        "NumberOfSeriesRelatedInstances",
    )
    assert values(found, "SeriesInstanceUID") == set(wanted), log
    counts = {str(ds.SeriesInstanceUID): int(ds.NumberOfSeriesRelatedInstances) for ds in found}
    assert counts == {corpus.series["S1CT2"]: 2, corpus.series["S3CT"]: 1}

    ct_in_s1, _ = findscu(
        node,
        tmp_path,
        model,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={corpus.studies['S1']}",
        "Modality=CT",
        "SeriesInstanceUID",
    )
    assert values(ct_in_s1, "SeriesInstanceUID") == {corpus.series["S1CT1"], corpus.series["S1CT2"]}


@pytest.mark.parametrize("model", ["-P", "-S"])
def test_image_level(node: DicomNode, corpus: Corpus, tmp_path: Path, model: str) -> None:
    sops = corpus.sops["S1CT1"]
    found, log = findscu(
        node,
        tmp_path,
        model,
        "QueryRetrieveLevel=IMAGE",
        f"SeriesInstanceUID={corpus.series['S1CT1']}",
        "SOPInstanceUID=" + "\\".join(sops[:2]),
        "InstanceNumber",
        "SOPClassUID",
        "ImageType",  # not indexed: answered from the stored file
    )
    assert values(found, "SOPInstanceUID") == set(sops[:2]), log
    assert {int(ds.InstanceNumber) for ds in found} == {1, 2}
    assert all("ImageType" in ds for ds in found)

    whole_series, _ = findscu(
        node,
        tmp_path,
        model,
        "QueryRetrieveLevel=IMAGE",
        f"SeriesInstanceUID={corpus.series['S1CT1']}",
        "SOPInstanceUID",
    )
    assert values(whole_series, "SOPInstanceUID") == set(sops)


def test_non_ascii_names_come_back_in_utf8(node: DicomNode, corpus: Corpus, tmp_path: Path) -> None:
    found, log = findscu(
        node,
        tmp_path,
        "-S",
        "QueryRetrieveLevel=STUDY",
        "AccessionNumber=ACC3",
        "PatientName",
        "SpecificCharacterSet",
    )
    (match,) = found
    assert match.SpecificCharacterSet == "ISO_IR 192", log
    assert str(match.PatientName) == "Müller^Hans"


def test_patient_level_is_refused_in_study_root(
    node: DicomNode, corpus: Corpus, tmp_path: Path
) -> None:
    found, log = findscu(
        node, tmp_path, "-S", "QueryRetrieveLevel=PATIENT", "PatientID", extra=("-d",)
    )
    assert found == []
    assert "DIMSE Status                  : 0xa900" in log, log
    assert "PATIENT level is not in the Study Root model" in log


def test_bad_identifiers_fail_with_a_comment(
    node: DicomNode, corpus: Corpus, tmp_path: Path
) -> None:
    found, log = findscu(node, tmp_path, "-S", "PatientID=PAT001", extra=("-d",))
    assert found == []
    assert "Query/Retrieve Level (0008,0052) is missing" in log
    found, log = findscu(
        node, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "SeriesDescription=AXIAL*", extra=("-d",)
    )
    assert found == []
    assert "SeriesDescription belongs to the SERIES level" in log
    # the association and the server go on working
    ok, _ = findscu(node, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID")
    assert len(ok) == 3


def test_cancel(
    node: DicomNode, corpus: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """findscu cancels after the first response; the server holds the second match
    back until it has recorded the C-CANCEL, so the outcome does not depend on speed."""
    real_find = node.archive.find

    def cancel_seen() -> bool:
        server = node.dicom._server
        assert server is not None
        return any(assoc.dimse.cancel_req for assoc in server.active_associations)

    def gated(matches: list[Dataset]) -> Iterator[Dataset]:
        for n, match in enumerate(matches):
            if n == 1:
                for _ in range(3000):  # the test's own timeout bounds the wait anyway
                    if cancel_seen():
                        break
                    threading.Event().wait(0.01)
            yield match

    def find(query: Any, **kwargs: Any) -> Any:
        return gated(real_find(query, **kwargs))

    monkeypatch.setattr(node.archive, "find", find)
    found, log = findscu(
        node,
        tmp_path,
        "-S",
        "QueryRetrieveLevel=IMAGE",
        "SOPInstanceUID",
        extra=("--cancel", "1", "-d"),
    )
    assert len(found) == 1, log
    assert "0xfe00" in log.lower(), log


def test_matching_stops_at_the_query_limit(
    make_node: Callable[..., DicomNode], tmp_path: Path
) -> None:
    node = make_node(archive={"query_limit": 2})
    for patient, count in (("MANY", 3), ("TWO", 2)):
        for _ in range(count):
            ds = make_instance(patient_id=patient, rows=8, columns=8)
            assert node.archive.ingest(to_bytes(ds), {"interface": "import"}).ok
    keys = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID")
    cut, log = findscu(node, tmp_path, "-S", *keys, "PatientID=MANY")
    assert len(cut) == 2, log
    assert "Final Find Response (Cancel" in log, log
    # Exactly as many matches as the limit is a complete answer.
    whole, log = findscu(node, tmp_path, "-S", *keys, "PatientID=TWO")
    assert len(whole) == 2, log
    assert "Final Find Response (Success)" in log, log
    events = AuditTrail(node.archive.sessions).events(action="query")
    assert any("cut at archive.query_limit=2" in e.detail for e in events)


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99CIAMS", meaning
    return item


def test_sequence_return_keys_carry_the_requested_attributes(
    node: DicomNode, tmp_path: Path
) -> None:
    # PS3.4 C.2.2.2.6: an item names the attributes to return, an empty one the whole
    # sequence.
    ds = make_instance(patient_id="SEQ", accession="ACCSEQ", rows=8, columns=8)
    chest, abdomen = _code("CT1", "CT Thorax"), _code("CT2", "Ärztliche Abdomen")
    abdomen.EquivalentCodeSequence = [_code("74185", "CT abdomen w/o contrast")]
    ds.ProcedureCodeSequence = [chest, abdomen]
    assert node.archive.ingest(to_bytes(ds), {"interface": "import"}).ok
    keys = ("QueryRetrieveLevel=STUDY", "AccessionNumber=ACCSEQ")

    (named,), log = findscu(
        node,
        tmp_path,
        "-S",
        *keys,
        "ProcedureCodeSequence[0].CodeValue",
        "ProcedureCodeSequence[0].EquivalentCodeSequence[0].CodeValue",
    )
    items = named.ProcedureCodeSequence
    assert [i.CodeValue for i in items] == ["CT1", "CT2"], log
    assert all({e.keyword for e in i} == {"CodeValue", "EquivalentCodeSequence"} for i in items)
    assert items[0].EquivalentCodeSequence == []
    assert [e.CodeValue for e in items[1].EquivalentCodeSequence] == ["74185"]
    assert "CodeMeaning" not in items[1].EquivalentCodeSequence[0]

    (whole,), log = findscu(node, tmp_path, "-S", *keys, "ProcedureCodeSequence[0]")
    assert [i.CodeMeaning for i in whole.ProcedureCodeSequence] == [
        "CT Thorax",
        "Ärztliche Abdomen",
    ], log
    assert whole.SpecificCharacterSet == "ISO_IR 192"
    assert whole.ProcedureCodeSequence[1].EquivalentCodeSequence[0].CodeValue == "74185"

    (absent,), log = findscu(node, tmp_path, "-S", *keys, "ReferencedStudySequence[0]")
    assert absent.ReferencedStudySequence == [], log

    for outer, inner in (
        ("[0]", "[1]"),
        ("[0].EquivalentCodeSequence[0]", "[0].EquivalentCodeSequence[1]"),
    ):
        failed, log = findscu(
            node,
            tmp_path,
            "-S",
            *keys,
            f"ProcedureCodeSequence{outer}.CodeValue",
            f"ProcedureCodeSequence{inner}.CodeValue",
            extra=("-d",),
        )
        assert failed == [], log
        assert "Sequence must have one item, not 2" in log, log
