"""DICOMweb test helpers: a real dicomweb-client on the ``server`` fixture."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset


@pytest.fixture
def client(server: Any) -> DICOMwebClient:
    return DICOMwebClient(url=server.http_url + "/dicom-web", headers=server.auth)


def client_bytes(ds: Dataset) -> bytes:
    """The bytes dicomweb-client sends for ``ds`` (it encodes with ``dcmwrite(b, ds)``)."""
    with BytesIO() as buf:
        pydicom.dcmwrite(buf, ds)
        return buf.getvalue()


def multipart(parts: list[bytes], boundary: str = "ciams-test-boundary") -> tuple[bytes, str]:
    """A STOW-RS body and its Content-Type, built by hand for malformed-input tests."""
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'
