"""WADO-RS (PS3.18 10.4) through dicomweb-client: instances, metadata, frames, rendered."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import anyio
import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset

from ciams.web.dicomweb import wado
from tests.corpus import make_series, vendor_file
from tests.web.conftest import client_bytes
from tests.web.test_stow import VENDOR

ACCEPT_DICOM = 'multipart/related; type="application/dicom"'


def _as_stored(ds: Dataset) -> bytes:
    """What the archive keeps of what dicomweb-client sent (a Part 10 file)."""
    data = client_bytes(ds)
    return data if data[128:132] == b"DICM" else b"\x00" * 128 + b"DICM" + data


def _raw(client: DICOMwebClient, url: str) -> list[bytes]:
    """The parts as stored (``transfer-syntax=*``), through the client's own decoder."""
    return list(client._http_get_multipart(url, media_types=(("*/*", "*"),)))


@pytest.fixture
def series(client: DICOMwebClient) -> list[Dataset]:
    datasets = list(make_series(4))
    client.store_instances(datasets)
    return datasets


@pytest.fixture
def vendor(client: DICOMwebClient) -> dict[str, Dataset]:
    # Each dataset is read back from one encoding, so that what the client sends is that
    # encoding (pydicom may normalise a vendor file on its first write, and writing
    # the same object twice may differ).
    encoded = {name: _as_stored(pydicom.dcmread(vendor_file(name))) for name in VENDOR}
    datasets: dict[str, Dataset] = {
        name: pydicom.dcmread(BytesIO(data)) for name, data in encoded.items()
    }
    client.store_instances(list(datasets.values()))
    for name, ds in datasets.items():
        ds.encoded = encoded[name]
    return datasets


def test_retrieve_study_series_instance_bytes(
    server: Any, client: DICOMwebClient, series: list[Dataset]
) -> None:
    study, uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    expected = {ds.SOPInstanceUID: _as_stored(ds) for ds in series}
    retrieved = client.retrieve_study(study)
    assert {ds.SOPInstanceUID for ds in retrieved} == set(expected)
    assert len(client.retrieve_series(study, uid)) == 4
    one = client.retrieve_instance(study, uid, series[2].SOPInstanceUID)
    assert one.PixelData == series[2].PixelData
    root = f"{server.http_url}/dicom-web/studies/{study}"
    parts = _raw(client, root)
    assert sorted(parts) == sorted(expected.values())
    sop = series[1].SOPInstanceUID
    assert _raw(client, f"{root}/series/{uid}/instances/{sop}") == [expected[sop]]


def test_retrieve_vendor_files_as_stored_and_transcoded(
    server: Any, client: DICOMwebClient, vendor: dict[str, Dataset]
) -> None:
    for ds in vendor.values():
        url = (
            f"{server.http_url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
            f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        )
        assert _raw(client, url) == [ds.encoded]
        # Without a transfer-syntax parameter the default is Explicit VR Little Endian
        # (PS3.18 8.7.3.5): what is stored otherwise comes back re-encoded, or decoded.
        # (The client's retrieve_instance() asks for transfer-syntax=*, as stored.)
        (default,) = client._http_get_multipart_application_dicom(url)
        assert default.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        if "PixelData" in ds:
            assert np.array_equal(default.pixel_array, ds.pixel_array)
    # Asked for explicitly, the same.
    j2k = vendor["MR_small_jp2klossless.dcm"]
    decoded = client.retrieve_instance(
        j2k.StudyInstanceUID,
        j2k.SeriesInstanceUID,
        j2k.SOPInstanceUID,
        media_types=(("application/dicom", "1.2.840.10008.1.2.1"),),
    )
    assert decoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(decoded.pixel_array, j2k.pixel_array)
    # Any other transfer syntax than the stored one is not acceptable.
    url = f"{server.http_url}/dicom-web/studies/{j2k.StudyInstanceUID}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    response = httpx.get(url, headers={**server.auth, "Accept": accept})
    assert response.status_code == 406
    assert response.json()["error"] == "not-acceptable"


def test_retrieve_in_batches_and_pieces_keeps_order_and_bytes(
    server: Any, client: DICOMwebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches and pieces, so that one study crosses several read-ahead batches
    # and every instance is sent in several pieces.
    monkeypatch.setattr(wado, "READ_AHEAD", 20_000)
    monkeypatch.setattr(wado, "CHUNK", 3_000)
    datasets = list(make_series(7))
    client.store_instances(datasets)
    study = datasets[0].StudyInstanceUID
    by_number = sorted(datasets, key=lambda ds: ds.InstanceNumber)
    expected = [_as_stored(ds) for ds in by_number]
    assert all(len(data) > 3 * 3_000 for data in expected)
    url = f"{server.http_url}/dicom-web/studies/{study}"
    assert _raw(client, url) == expected
    assert [ds.SOPInstanceUID for ds in client.retrieve_study(study)] == [
        ds.SOPInstanceUID for ds in by_number
    ]
    # Sent as stored, the body's length is known up front (no chunked coding).
    response = httpx.get(url, headers={**server.auth, "Accept": ACCEPT_DICOM})
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert "transfer-encoding" not in response.headers
    assert response.content.endswith(b"--\r\n")


def test_retrieve_of_a_damaged_file_fails_loudly(
    server: Any, client: DICOMwebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wado, "READ_AHEAD", 1)  # one instance per batch
    datasets = list(make_series(3))
    client.store_instances(datasets)
    study = datasets[0].StudyInstanceUID
    refs = server.archive.instances(study)
    url = f"{server.http_url}/dicom-web/studies/{study}"
    headers = {**server.auth, "Accept": ACCEPT_DICOM}
    # A stored file that is not the indexed size cannot be framed as indexed. In a
    # later batch the body is cut off (the client sees an incomplete message) ...
    last = server.archive.storage.local_path(refs[-1].storage_key)
    last.write_bytes(last.read_bytes()[:-10])
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url, headers=headers)
    # ... in the first, read before the response starts, it is an error status.
    first = server.archive.storage.local_path(refs[0].storage_key)
    first.write_bytes(first.read_bytes()[:-10])
    response = httpx.get(url, headers=headers)
    assert response.status_code == 507
    assert response.json()["error"] == "storage"


@pytest.mark.anyio
async def test_read_ahead_is_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    batches = [[1, 2], [3], [4, 5]]  # after the first batch, [0]
    batch_of = {0: 0, 1: 1, 2: 1, 3: 2, 4: 3, 5: 3}
    read: list[int] = []

    def read_batch(ctx: Any, batch: list[int]) -> list[memoryview]:
        read.extend(batch)
        return [memoryview(b"%d" % n) for n in batch]

    class Reads:
        async def read(self, func: Any, *args: Any) -> Any:
            return await anyio.to_thread.run_sync(func, *args)

    monkeypatch.setattr(wado, "_read_batch", read_batch)
    body = wado._instance_parts(Reads(), [memoryview(b"0")], batches, "b")  # type: ignore[arg-type]
    out = []
    async for part in body:
        out.append(bytes(part))
        if part == b"--b--\r\n":
            break
        await anyio.sleep(0.05)  # a slow client: the read-ahead has had its time
        # While a batch is sent, the next one is read, and not more.
        ahead = batch_of[int(part)] + 1
        assert read == [n for n in range(1, 6) if batch_of[n] <= ahead]
    assert out == [b"0", b"1", b"2", b"3", b"4", b"5", b"--b--\r\n"]


def test_metadata(server: Any, client: DICOMwebClient, series: list[Dataset]) -> None:
    study, uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    study_meta = client.retrieve_study_metadata(study)
    assert len(study_meta) == 4
    assert len(client.retrieve_series_metadata(study, uid)) == 4
    meta = client.retrieve_instance_metadata(study, uid, series[0].SOPInstanceUID)
    assert meta["00100020"]["Value"] == ["PAT001"]
    assert meta["00280010"]["Value"] == [64]
    pixel = meta["7FE00010"]
    assert pixel["vr"] == "OW"
    assert "InlineBinary" not in pixel
    frames = client.retrieve_bulkdata(pixel["BulkDataURI"])
    assert frames == [series[0].PixelData]


def test_frames_native_and_compressed(
    client: DICOMwebClient, series: list[Dataset], vendor: dict[str, Dataset]
) -> None:
    ds = series[0]
    frames = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1]
    )
    assert frames == [ds.PixelData]
    # Multi-frame RLE: decoded frames by default, in the order asked for.
    dose = vendor["rtdose_rle.dcm"]
    ids = (dose.StudyInstanceUID, dose.SeriesInstanceUID, dose.SOPInstanceUID)
    got = client.retrieve_instance_frames(*ids, frame_numbers=[3, 1])
    arr = dose.pixel_array
    assert got == [arr[2].astype("<u4").tobytes(), arr[0].astype("<u4").tobytes()]
    # The compressed frame as stored, when the client accepts it.
    jpeg = vendor["SC_rgb_jpeg_dcmtk.dcm"]
    compressed = client.retrieve_instance_frames(
        jpeg.StudyInstanceUID,
        jpeg.SeriesInstanceUID,
        jpeg.SOPInstanceUID,
        frame_numbers=[1],
        media_types=("image/jpeg",),
    )
    assert compressed[0].startswith(b"\xff\xd8")
    assert compressed[0] == pydicom.encaps.get_frame(jpeg.PixelData, 0, number_of_frames=1)
    # The last frame of a 30-frame JPEG, as stored and decoded.
    cine = vendor["examples_ybr_color.dcm"]
    ids = (cine.StudyInstanceUID, cine.SeriesInstanceUID, cine.SOPInstanceUID)
    last = client.retrieve_instance_frames(*ids, frame_numbers=[30], media_types=("image/jpeg",))
    assert last == [pydicom.encaps.get_frame(cine.PixelData, 29, number_of_frames=30)]
    decoded = client.retrieve_instance_frames(*ids, frame_numbers=[30])
    assert decoded == [cine.pixel_array[29].tobytes()]


def test_missing_resources_are_404(server: Any, series: list[Dataset]) -> None:
    root = f"{server.http_url}/dicom-web"
    ds = series[0]
    instance = f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    for url in (
        f"{root}/studies/1.2.3",
        f"{root}/studies/1.2.3/metadata",
        f"{instance}/instances/1.2.3",
        f"{instance}/instances/{ds.SOPInstanceUID}/frames/2",
    ):
        response = httpx.get(url, headers=server.auth)
        assert response.status_code == 404, url
        assert response.json()["error"] == "not-found"
    assert httpx.get(f"{root}/nothing/here", headers=server.auth).json()["error"] == "not-found"


def _png(data: bytes) -> np.ndarray:
    image = Image.open(BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


def test_rendered(server: Any, client: DICOMwebClient, series: list[Dataset]) -> None:
    ds = series[0]
    ids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    default = _png(client.retrieve_instance_rendered(*ids, media_types=("image/png",)))
    assert default.shape == (64, 64)
    narrow = _png(
        client.retrieve_instance_rendered(
            *ids, media_types=("image/png",), params={"window": "500,100"}
        )
    )
    assert not np.array_equal(default, narrow)
    # A window spanning exactly the rescaled values (Modality LUT: intercept -1024):
    # the darkest maps to 0, the brightest to 255.
    values = ds.pixel_array.astype(float) - 1024
    low, high = values.min(), values.max()
    window = f"{(low + high) / 2},{high - low + 1},linear"
    wide = _png(client.retrieve_instance_rendered(*ids, params={"window": window}))
    assert wide.max() == 255
    assert wide.min() == 0
    url = (
        f"{server.http_url}/dicom-web/studies/{ids[0]}/series/{ids[1]}/instances/{ids[2]}"
        "/frames/1/rendered"
    )
    jpeg = httpx.get(url, headers={**server.auth, "Accept": "image/jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(BytesIO(jpeg.content)).size == (64, 64)
    assert httpx.get(url, headers={**server.auth, "Accept": "image/gif"}).status_code == 406
    assert httpx.get(url, params={"window": "40"}, headers=server.auth).status_code == 400


def test_rendered_vendor_images(
    server: Any, client: DICOMwebClient, vendor: dict[str, Dataset]
) -> None:
    for name in ("CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jp2klossless.dcm"):
        ds = vendor[name]
        data = client.retrieve_instance_rendered(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        image = Image.open(BytesIO(data))
        assert image.size == (ds.Columns, ds.Rows), name
        assert image.mode == ("RGB" if ds.SamplesPerPixel == 3 else "L"), name


def test_bulkdata_of_other_elements(client: DICOMwebClient, vendor: dict[str, Dataset]) -> None:
    ct = vendor["CT_small.dcm"]
    meta = client.retrieve_instance_metadata(
        ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID
    )
    private = meta["00431029"]  # a 2 KB private OB element
    assert set(private) == {"vr", "BulkDataURI"}
    assert client.retrieve_bulkdata(private["BulkDataURI"]) == [ct[0x00431029].value]
    assert meta["00100010"]["Value"] == [{"Alphabetic": str(ct.PatientName)}]


def test_thumbnail_viewport_and_search_media_type(
    server: Any, client: DICOMwebClient, series: list[Dataset]
) -> None:
    ds = series[0]
    url = (
        f"{server.http_url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
        f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    thumb = httpx.get(url + "/thumbnail", headers=server.auth)
    assert Image.open(BytesIO(thumb.content)).size == (128, 128)
    small = httpx.get(url + "/rendered", params={"viewport": "32,16"}, headers=server.auth)
    assert Image.open(BytesIO(small.content)).size == (16, 16)
    assert (
        httpx.get(url + "/rendered", params={"viewport": "0,x"}, headers=server.auth).status_code
        == 400
    )
    xml = httpx.get(
        f"{server.http_url}/dicom-web/studies",
        headers={**server.auth, "Accept": "application/dicom+xml"},
    )
    assert xml.status_code == 406
