"""QIDO-RS (PS3.18 10.6) through dicomweb-client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from tests.corpus import make_series


@pytest.fixture
def studies(client: DICOMwebClient) -> list[list[Dataset]]:
    """Three studies: two CT series for Doe (Jan, Mar 2024), one MR for Roe (2023)."""
    ct1 = list(make_series(3, patient_id="P1", patient_name="Doe^Jane", study_date="20240115"))
    ct1b = list(
        make_series(
            2,
            patient_id="P1",
            patient_name="Doe^Jane",
            study_uid=ct1[0].StudyInstanceUID,
            series_number=2,
            study_date="20240115",
        )
    )
    ct2 = list(make_series(2, patient_id="P1", patient_name="Doe^Jane", study_date="20240301"))
    mr = list(
        make_series(
            4, modality="MR", patient_id="P2", patient_name="Roe^Richard", study_date="20230620"
        )
    )
    for batch in (ct1 + ct1b, ct2, mr):
        client.store_instances(batch)
    return [ct1 + ct1b, ct2, mr]


def _uids(results: list[dict[str, Any]], tag: str = "0020000D") -> set[str]:
    return {r[tag]["Value"][0] for r in results}


def test_search_studies_default_attributes(
    client: DICOMwebClient, studies: list[list[Dataset]]
) -> None:
    results = client.search_for_studies()
    assert len(results) == 3
    first = next(r for r in results if r["0020000D"]["Value"][0] == studies[0][0].StudyInstanceUID)
    ds = Dataset.from_json(first)
    assert ds.PatientID == "P1"
    assert str(ds.PatientName) == "Doe^Jane"
    assert ds.StudyDate == "20240115"
    assert ds.NumberOfStudyRelatedSeries == 2
    assert ds.NumberOfStudyRelatedInstances == 5
    assert list(ds.ModalitiesInStudy) == ["CT"] or ds.ModalitiesInStudy == "CT"
    assert ds.RetrieveURL.endswith(f"/dicom-web/studies/{ds.StudyInstanceUID}")
    assert ds.InstanceAvailability == "ONLINE"


def test_search_studies_matching(client: DICOMwebClient, studies: list[list[Dataset]]) -> None:
    doe = {s[0].StudyInstanceUID for s in studies[:2]}
    assert _uids(client.search_for_studies(search_filters={"PatientID": "P1"})) == doe
    # tag form of the key, wildcard and case-insensitive person name
    assert _uids(client.search_for_studies(search_filters={"00100010": "doe*"})) == doe
    # date range
    in_2024 = client.search_for_studies(search_filters={"StudyDate": "20240101-20241231"})
    assert _uids(in_2024) == doe
    open_range = client.search_for_studies(search_filters={"StudyDate": "-20231231"})
    assert _uids(open_range) == {studies[2][0].StudyInstanceUID}
    # list of UIDs
    wanted = [studies[0][0].StudyInstanceUID, studies[2][0].StudyInstanceUID]
    listed = client.search_for_studies(search_filters={"StudyInstanceUID": ",".join(wanted)})
    assert _uids(listed) == set(wanted)
    assert _uids(client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})) == {
        studies[2][0].StudyInstanceUID
    }
    # fuzzy matching: a name component prefix
    fuzzy = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "rich"})
    assert _uids(fuzzy) == {studies[2][0].StudyInstanceUID}


def test_search_no_match_is_empty(client: DICOMwebClient, studies: list[list[Dataset]]) -> None:
    assert client.search_for_studies(search_filters={"PatientID": "nobody"}) == []


def test_limit_offset_and_includefield(
    client: DICOMwebClient, studies: list[list[Dataset]]
) -> None:
    everything = _uids(client.search_for_studies())
    pages = [client.search_for_studies(limit=1, offset=n) for n in range(4)]
    assert [len(p) for p in pages] == [1, 1, 1, 0]
    assert set().union(*(_uids(p) for p in pages)) == everything
    # A key read from the stored files (not indexed) on request, by keyword and by tag.
    results = client.search_for_instances(
        study_instance_uid=studies[0][0].StudyInstanceUID,
        fields=["Manufacturer", "00280100"],
    )
    assert len(results) == 5
    assert all(r["00080070"]["Value"] == ["CIAMS-TEST"] for r in results)
    assert all(r["00280100"]["Value"] == [16] for r in results)
    every = client.search_for_studies(fields=["all"], limit=1)
    assert "00100030" in every[0]  # PatientBirthDate, not a default attribute


def test_search_series_and_instances(client: DICOMwebClient, studies: list[list[Dataset]]) -> None:
    study = studies[0][0].StudyInstanceUID
    series = client.search_for_series(study_instance_uid=study)
    assert len(series) == 2
    one = Dataset.from_json(series[0])
    assert one.Modality == "CT"
    assert one.NumberOfSeriesRelatedInstances in (2, 3)
    assert one.RetrieveURL.endswith(f"/studies/{study}/series/{one.SeriesInstanceUID}")
    # all series, with study attributes
    mr = client.search_for_series(search_filters={"Modality": "MR"})
    assert len(mr) == 1
    assert mr[0]["00100020"]["Value"] == ["P2"]
    # instances of one series, of one study, of all
    instances = client.search_for_instances(
        study_instance_uid=study, series_instance_uid=one.SeriesInstanceUID
    )
    assert len(instances) == one.NumberOfSeriesRelatedInstances
    ds = Dataset.from_json(instances[0])
    assert ds.SOPClassUID == studies[0][0].SOPClassUID
    assert ds.Rows == 64
    assert ds.RetrieveURL.endswith(f"/instances/{ds.SOPInstanceUID}")
    assert len(client.search_for_instances(study_instance_uid=study)) == 5
    numbered = client.search_for_instances(search_filters={"InstanceNumber": "4"})
    assert len(numbered) == 1
    assert numbered[0]["00100020"]["Value"] == ["P2"]


def test_unknown_attribute_is_400(server: Any, studies: list[list[Dataset]]) -> None:
    url = server.http_url + "/dicom-web/studies"
    for params in ({"NoSuchKeyword": "1"}, {"includefield": "Bogus"}, {"limit": "-1"}):
        response = httpx.get(url, params=params, headers=server.auth)
        assert response.status_code == 400, params
        body = response.json()
        assert body["error"] == "invalid-request"
        assert body["message"]
    response = httpx.get(url, params={"SOPInstanceUID": "1.2.3"}, headers=server.auth)
    assert response.status_code == 400
    assert "level" in response.json()["message"]


def test_answers_stop_at_the_query_limit(make_server: Callable[..., Any]) -> None:
    server = make_server(archive={"query_limit": 2})
    client = DICOMwebClient(url=server.http_url + "/dicom-web", headers=server.auth)
    for _ in range(3):
        client.store_instances(list(make_series(1, patient_id="CAPPED")))
    url = server.http_url + "/dicom-web/studies"
    for params in ({}, {"limit": "5"}):
        response = httpx.get(url, params=params, headers=server.auth)
        assert response.status_code == 200
        assert len(response.json()) == 2
        assert "additional results" in response.headers["warning"]
    one = httpx.get(url, params={"limit": "1", "offset": "2"}, headers=server.auth)
    assert len(one.json()) == 1


def test_includefield_returns_a_whole_sequence(client: DICOMwebClient) -> None:
    (ds,) = make_series(1, patient_id="P9")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "CT1", "99CIAMS", "CT Thorax"
    ds.ProcedureCodeSequence = [code]
    client.store_instances([ds])
    (found,) = client.search_for_studies(
        search_filters={"PatientID": "P9"}, fields=["ProcedureCodeSequence"]
    )
    (item,) = Dataset.from_json(found).ProcedureCodeSequence
    assert (item.CodeValue, item.CodeMeaning) == ("CT1", "CT Thorax")
