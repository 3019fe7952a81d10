"""HTTPS with the documented settings and a self-signed certificate."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.tls import make_pki


def test_https_serves_with_configured_certificate(
    make_server: Callable[..., Any], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    server = make_server(
        tls={"cert_file": pki.server_cert, "key_file": pki.server_key, "dicom": False}
    )
    assert server.http_url.startswith("https://")
    ok = httpx.get(
        server.http_url + "/api/me",
        headers=server.auth,
        verify=ssl.create_default_context(cafile=str(pki.ca_cert)),
    )
    assert ok.status_code == 200
    assert ok.headers["x-content-type-options"] == "nosniff"
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.http_url + "/api/me", verify=True)  # not a public CA
    plain = server.http_url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain + "/api/health")
