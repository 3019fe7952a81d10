"""STOW-RS (PS3.18 10.5) through dicomweb-client and raw HTTP for malformed input."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid
from requests import HTTPError

from tests.corpus import make_instance, make_series, to_bytes, vendor_file
from tests.web.conftest import multipart

# Distinct SOP Instance UIDs across several transfer syntaxes.
VENDOR = [
    "CT_small.dcm",  # Explicit VR Little Endian
    "SC_rgb_jpeg_dcmd.dcm",  # Implicit VR Little Endian
    "ExplVR_BigEnd.dcm",  # Explicit VR Big Endian
    "image_dfl.dcm",  # Deflated
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "rtdose_rle.dcm",  # RLE, 15 frames
    "examples_ybr_color.dcm",  # JPEG baseline, YBR_FULL_422, 30 frames
]


def test_store_generated_series(server: Any, client: DICOMwebClient) -> None:
    series = list(make_series(5))
    study = series[0].StudyInstanceUID
    response = client.store_instances(series)
    refs = response.ReferencedSOPSequence
    assert len(refs) == 5
    assert "FailedSOPSequence" not in response
    assert {r.ReferencedSOPInstanceUID for r in refs} == {ds.SOPInstanceUID for ds in series}
    assert all(r.ReferencedSOPClassUID == series[0].SOPClassUID for r in refs)
    assert refs[0].RetrieveURL.endswith(
        f"/studies/{study}/series/{series[0].SeriesInstanceUID}"
        f"/instances/{refs[0].ReferencedSOPInstanceUID}"
    )
    # dicomweb-client sends "Host: 127.0.0.1" without the port, so compare the path only.
    assert response.RetrieveURL.endswith(f"/dicom-web/studies/{study}")
    assert server.archive.counts()["instances"] == 5
    # Storing the same bytes again is idempotent: still 200 and success.
    again = client.store_instances(series[:1])
    assert len(again.ReferencedSOPSequence) == 1


def test_store_vendor_files(server: Any, client: DICOMwebClient) -> None:
    datasets = [pydicom.dcmread(vendor_file(name)) for name in VENDOR]
    response = client.store_instances(datasets)
    assert "FailedSOPSequence" not in response
    assert len(response.ReferencedSOPSequence) == len(VENDOR)
    stored = {ref.transfer_syntax_uid for ref in server.archive.instances()}
    assert stored == {str(ds.file_meta.TransferSyntaxUID) for ds in datasets}


def test_store_into_named_study(server: Any, client: DICOMwebClient) -> None:
    study = generate_uid()
    mine = make_instance(study_uid=study)
    other = make_instance()
    response = client.store_instances([mine, other], study_instance_uid=study)
    assert [r.ReferencedSOPInstanceUID for r in response.ReferencedSOPSequence] == [
        mine.SOPInstanceUID
    ]
    failed = response.FailedSOPSequence
    assert len(failed) == 1
    assert failed[0].ReferencedSOPInstanceUID == other.SOPInstanceUID
    assert failed[0].FailureReason == 0xA900
    assert response.RetrieveURL.endswith(f"/studies/{study}")
    reasons = [e for e in server.archive.quarantine.entries() if e.code == "study-mismatch"]
    assert [e.sop_instance_uid for e in reasons] == [other.SOPInstanceUID]


def _post(server: Any, body: bytes | Iterator[bytes], content_type: str) -> httpx.Response:
    return httpx.post(
        server.http_url + "/dicom-web/studies",
        content=body,
        headers={**server.auth, "Content-Type": content_type},
        timeout=60,
    )


def test_not_dicom_part_is_refused_and_quarantined(server: Any) -> None:
    body, content_type = multipart([b"this is not a DICOM file"])
    response = _post(server, body, content_type)
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/dicom+json"
    result = pydicom.Dataset.from_json(response.json())
    assert result.FailedSOPSequence[0].FailureReason == 0xC000
    assert "quarantine" in response.headers["warning"]
    entries = list(server.archive.quarantine.entries())
    assert len(entries) == 1
    assert entries[0].source["interface"] == "stow"
    assert server.archive.quarantine.data(entries[0].id) == b"this is not a DICOM file"


def test_mixed_good_and_bad_parts_answer_202(server: Any) -> None:
    good = make_instance()
    body, content_type = multipart([to_bytes(good), b"\x00" * 200])
    response = _post(server, body, content_type)
    assert response.status_code == 202
    result = pydicom.Dataset.from_json(response.json())
    assert result.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == good.SOPInstanceUID
    assert len(result.FailedSOPSequence) == 1


def test_refused_parts_name_the_instances_they_carry(server: Any) -> None:
    # PS3.18 Table I.1-1: a FailedSOPSequence item has the SOP Class and Instance UIDs.
    mismatched = make_instance()
    uid = mismatched.SOPInstanceUID.encode()
    other = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    # pydicom rewrites the file meta's UID on save: change its first occurrence after.
    wrong_meta = to_bytes(mismatched).replace(uid, other, 1)
    truncated = make_instance(seed=3)
    body, content_type = multipart([wrong_meta, to_bytes(truncated)[:-1000]])
    response = _post(server, body, content_type)
    assert response.status_code == 409
    failed = pydicom.Dataset.from_json(response.json()).FailedSOPSequence
    assert [(f.ReferencedSOPClassUID, f.ReferencedSOPInstanceUID) for f in failed] == [
        (ds.SOPClassUID, ds.SOPInstanceUID) for ds in (mismatched, truncated)
    ]
    assert all(f.FailureReason == 0xC000 for f in failed)
    assert "differs from SOP Instance UID" in response.headers["warning"]
    entries = list(server.archive.quarantine.entries())
    assert sorted(e.sop_instance_uid for e in entries) == sorted(
        ds.SOPInstanceUID for ds in (mismatched, truncated)
    )
    assert server.archive.counts()["instances"] == 0


def test_conflicting_instance_fails_with_duplicate_status(server: Any) -> None:
    first = make_instance()
    second = make_instance(seed=7)
    second.SOPInstanceUID = first.SOPInstanceUID
    second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    second.StudyInstanceUID = first.StudyInstanceUID
    second.SeriesInstanceUID = first.SeriesInstanceUID
    assert _post(server, *multipart([to_bytes(first)])).status_code == 200
    response = _post(server, *multipart([to_bytes(second)]))
    assert response.status_code == 409
    result = pydicom.Dataset.from_json(response.json())
    assert result.FailedSOPSequence[0].FailureReason == 0x0111
    assert result.FailedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        'multipart/related; type="application/dicom+json"; boundary=x',
        "text/plain",
    ],
)
def test_wrong_content_type_is_415(server: Any, content_type: str) -> None:
    response = _post(server, to_bytes(make_instance()), content_type)
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported-media-type"
    assert "multipart/related" in response.json()["message"]


def test_malformed_multipart_is_400_and_kept(server: Any) -> None:
    data = to_bytes(make_instance())
    # A body whose boundary does not match the one the Content-Type announces.
    body, _ = multipart([data], boundary="actual")
    response = _post(server, body, 'multipart/related; type="application/dicom"; boundary=other')
    assert response.status_code == 400
    assert response.json()["error"] == "invalid-request"
    entries = list(server.archive.quarantine.entries())
    assert len(entries) == 1
    assert server.archive.quarantine.data(entries[0].id) == body
    # A body cut before its closing boundary: the incomplete part is kept.
    body, content_type = multipart([data])
    truncated = body[: len(body) // 2]
    response = _post(server, truncated, content_type)
    assert response.status_code == 400
    assert "closing boundary" in response.json()["message"]
    kept = [server.archive.quarantine.data(e.id) for e in server.archive.quarantine.entries()]
    assert any(data.startswith(k) and k for k in kept)
    assert server.archive.counts()["instances"] == 0


def test_body_over_limit_is_413(make_server: Any) -> None:
    server = make_server(archive={"max_upload_bytes": 20_000})
    series = [to_bytes(ds) for ds in make_series(3)]  # ~8.5 KB each
    body, content_type = multipart(series)
    assert len(body) > 20_000
    # Declared length over the limit: refused before reading.
    response = _post(server, body, content_type)
    assert response.status_code == 413
    assert response.json()["error"] == "payload-too-large"

    # Chunked upload: refused once the streamed size passes the limit.
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    response = _post(server, chunks(), content_type)
    assert response.status_code == 413
    assert "max_upload_bytes" in response.json()["message"]
    entries = [e for e in server.archive.quarantine.entries() if e.code == "payload-too-large"]
    assert len(entries) == 1
    assert 0 < entries[0].size <= 20_000
    # The server still answers, and a small upload still works.
    small, content_type = multipart(series[:1])
    assert _post(server, small, content_type).status_code == 200
    assert httpx.get(server.http_url + "/api/health", headers=server.auth).json()["status"] == "ok"


def test_client_error_surface(server: Any, client: DICOMwebClient) -> None:
    """dicomweb-client raises for an all-failed upload (409)."""
    bad = make_instance()
    del bad.SOPClassUID
    with pytest.raises(HTTPError):
        client.store_instances([bad])


def test_parallel_uploads(server: Any) -> None:
    """Several clients storing at once all get their own complete answer."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [[to_bytes(ds) for ds in make_series(6, seed=n)] for n in range(4)]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda b: _post(server, *multipart(b)), batches))
    assert [r.status_code for r in responses] == [200] * 4
    for response in responses:
        assert len(pydicom.Dataset.from_json(response.json()).ReferencedSOPSequence) == 6
    assert server.archive.counts()["instances"] == 24
