"""The ASGI app: health, landing page, security headers, one error mapping."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ciams.errors import CiamsError, StorageError, UnknownDestinationError


def test_health(server: Any) -> None:
    response = httpx.get(server.http_url + "/api/health", headers=server.auth)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"]
    assert "counts" not in body  # public: nothing about the archive's content
    stats = httpx.get(server.http_url + "/api/stats", headers=server.auth)
    assert stats.json()["counts"]["instances"] == 0
    assert httpx.get(server.http_url + "/api/stats").status_code == 401


def test_landing_page_and_security_headers(server: Any) -> None:
    response = httpx.get(server.http_url + "/", headers=server.auth)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/dicom-web" in response.text
    assert server.settings.dicom.ae_title in response.text
    for url in ("/", "/api/health", "/dicom-web/studies", "/missing"):
        headers = httpx.get(server.http_url + url, headers=server.auth).headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert "default-src 'self'" in headers["content-security-policy"]


def test_openapi_lists_dicomweb(server: Any) -> None:
    spec = httpx.get(server.http_url + "/openapi.json", headers=server.auth).json()
    assert "/dicom-web/studies" in spec["paths"]
    assert "post" in spec["paths"]["/dicom-web/studies"]


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (StorageError("disk full"), 507, "storage"),
        (UnknownDestinationError("no AE X"), 404, "unknown-destination"),
        (CiamsError("base"), 500, "internal"),
    ],
)
def test_errors_map_through_the_class_hierarchy(
    server: Any, exc: CiamsError, status: int, code: str
) -> None:
    async def fail() -> None:
        raise exc

    server.app.add_api_route("/test/fail", fail)
    response = httpx.get(server.http_url + "/test/fail", headers=server.auth)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert response.json()["message"] == exc.message


def test_unexpected_error_is_500_without_internals(server: Any) -> None:
    async def boom() -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    server.app.add_api_route("/test/boom", boom)
    response = httpx.get(server.http_url + "/test/boom", headers=server.auth)
    assert response.status_code == 500
    assert response.json()["error"] == "internal"
    assert "secret" not in response.text
    assert httpx.get(server.http_url + "/api/health", headers=server.auth).status_code == 200
