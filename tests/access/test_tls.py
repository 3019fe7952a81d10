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


@pytest.mark.dcmtk
@pytest.mark.parametrize("workers", [1, 2])
def test_dicom_tls_with_client_certificates(
    make_server: Callable[..., Any], tmp_path: Path, workers: int
) -> None:
    from ciams.access import Accounts
    from tests.corpus import make_instance, to_bytes
    from tests.net.conftest import dcmtk

    pki = make_pki(tmp_path / "pki")
    server = make_server(
        tls={
            "cert_file": pki.server_cert,
            "key_file": pki.server_key,
            "ca_file": pki.ca_cert,
            "require_client_cert": True,
            "http": False,
        },
        access={"anonymous_dicom_on_loopback": False},
        dicom={"workers": workers},  # with 2, every other association is served by a worker
    )
    accounts = Accounts(server.archive.sessions)
    accounts.add_user("gw1", "site", trial="T", site="S1")
    accounts.bind_ae("GW1", "gw1", cert_sha256=pki.client_sha256)
    ds = make_instance(patient_id="TLS-1", rows=8, columns=8)
    server.archive.ingest(to_bytes(ds), {"trial": "T", "site": "S1", "scoped": "1"})
    peer = ("-aec", server.settings.dicom.ae_title, "127.0.0.1", str(server.dicom_port))
    tls = ("+tls", pki.client_key, pki.client_cert, "+cf", pki.ca_cert)

    echo = dcmtk("echoscu", "-v", "-aet", "GW1", *tls, *peer)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    plain = dcmtk("echoscu", "-aet", "GW1", *peer)
    assert plain.returncode != 0  # no TLS, no association
    no_cert = dcmtk("echoscu", "-aet", "GW1", "+tla", "+cf", pki.ca_cert, *peer)
    assert no_cert.returncode != 0  # the server requires a client certificate
    assert "TLS" in no_cert.stdout + no_cert.stderr or "Association" in no_cert.stderr

    out = tmp_path / "find"
    out.mkdir()
    keys = ("-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID")
    found = dcmtk(
        "findscu", "-v", "-S", "-X", "-od", out, *keys, "-aet", "GW1", *tls, *peer, cwd=out
    )
    assert found.returncode == 0, found.stdout + found.stderr
    assert len(list(out.glob("rsp*.dcm"))) == 1
    # the same certificate under another AE title is not bound: refused
    other = dcmtk("findscu", "-v", "-S", *keys, "-aet", "GW2", *tls, *peer)
    assert "0x124" in other.stdout + other.stderr
