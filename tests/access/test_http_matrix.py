"""Authorization matrix on the HTTP side: every role from two sites on every endpoint."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ciams.access import Accounts
from tests.conftest import running_server, wait_until
from tests.corpus import make_instance, to_bytes
from tests.web.conftest import multipart

ROLES = {
    "admin": ("admin", "", ""),
    "monitor": ("monitor", "T", ""),
    "site1": ("site", "T", "S1"),
    "site2": ("site", "T", "S2"),
    "reader": ("reader", "T", ""),
    "researcher": ("researcher", "T", ""),
    "auditor": ("auditor", "", ""),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pg_base_url: str | None) -> Any:
    """One server, a study per site, a token per role (module scope: many requests)."""
    with running_server(tmp_path_factory.mktemp("matrix") / "data", pg_base_url) as server:
        yield from _populate(server)


def _populate(server: Any) -> Any:
    accounts = Accounts(server.archive.sessions)
    tokens = {}
    for name, (role, trial, site) in ROLES.items():
        accounts.add_user(name, role, trial=trial, site=site)
        tokens[name] = accounts.issue_token(name)
    studies = {}
    for site in ("site1", "site2"):
        ds = make_instance(patient_id=f"P-{site}", rows=16, columns=16)
        body, ctype = multipart([to_bytes(ds)])
        r = httpx.post(
            server.http_url + "/dicom-web/studies",
            content=body,
            headers={"Content-Type": ctype, "Authorization": f"Bearer {tokens[site]}"},
        )
        assert r.status_code == 200, r.text
        studies[site] = ds
    yield server, tokens, studies


def _call(server: Any, token: str | None, method: str, path: str, **kw: Any) -> int:
    headers = dict(kw.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, server.http_url + path, headers=headers, **kw).status_code


def _paths(ds: Any) -> dict[str, tuple[str, str]]:
    inst = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    return {
        "qido": ("GET", f"/dicom-web/studies?StudyInstanceUID={ds.StudyInstanceUID}"),
        "retrieve": ("GET", f"/dicom-web/studies/{ds.StudyInstanceUID}"),
        "metadata": ("GET", f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata"),
        "rendered": ("GET", inst + "/rendered"),
        "frames": ("GET", inst + "/frames/1"),
        "me": ("GET", "/api/me"),
    }


def test_matrix_on_site1_study(world: Any) -> None:
    server, tokens, studies = world
    target = studies["site1"]
    seen: dict[str, dict[str, int]] = {}
    for user in [*ROLES, None]:
        token = tokens[user] if user else None
        seen[str(user)] = {}
        for name, (method, path) in _paths(target).items():
            status = _call(server, token, method, path)
            if name == "qido" and status == 200:
                status = 200  # found
            seen[str(user)][name] = status
    ok, empty, denied, missing, anon = 200, 204, 403, 404, 401
    expect = {
        "admin": dict(qido=ok, retrieve=ok, metadata=ok, rendered=ok, frames=ok, me=ok),
        "monitor": dict(qido=ok, retrieve=ok, metadata=ok, rendered=ok, frames=ok, me=ok),
        "site1": dict(qido=ok, retrieve=ok, metadata=ok, rendered=ok, frames=ok, me=ok),
        # another site: searches find nothing, retrievals answer as for a missing study
        "site2": dict(
            qido=empty, retrieve=missing, metadata=missing, rendered=missing, frames=missing, me=ok
        ),
        "reader": dict(qido=ok, retrieve=denied, metadata=ok, rendered=ok, frames=ok, me=ok),
        "researcher": dict(
            qido=denied, retrieve=denied, metadata=denied, rendered=denied, frames=denied, me=ok
        ),
        "auditor": dict(
            qido=denied, retrieve=denied, metadata=denied, rendered=denied, frames=denied, me=ok
        ),
        "None": dict(qido=anon, retrieve=anon, metadata=anon, rendered=anon, frames=anon, me=anon),
    }
    assert seen == expect


def test_denied_equals_missing(world: Any) -> None:
    server, tokens, studies = world
    other = studies["site1"]
    as_site2 = httpx.get(
        f"{server.http_url}/dicom-web/studies/{other.StudyInstanceUID}/metadata",
        headers={"Authorization": f"Bearer {tokens['site2']}"},
    )
    missing = httpx.get(
        f"{server.http_url}/dicom-web/studies/1.2.3.4.5.6.7/metadata",
        headers={"Authorization": f"Bearer {tokens['site2']}"},
    )
    assert (as_site2.status_code, as_site2.json()) == (missing.status_code, missing.json())
    assert str(other.PatientID) not in as_site2.text


def test_upload_rights_and_site_placement(world: Any) -> None:
    server, tokens, _ = world
    allowed = {}
    for user in ROLES:
        body, ctype = multipart(
            [to_bytes(make_instance(patient_id=f"U-{user}", rows=8, columns=8))]
        )
        allowed[user] = _call(
            server,
            tokens[user],
            "POST",
            "/dicom-web/studies",
            content=body,
            headers={"Content-Type": ctype},
        )
    assert allowed == {
        "admin": 200,
        "monitor": 403,
        "site1": 200,
        "site2": 200,
        "reader": 403,
        "researcher": 403,
        "auditor": 403,
    }
    # site1 sees its own uploads only
    found = httpx.get(
        server.http_url + "/dicom-web/studies",
        params={"PatientID": "U-*"},
        headers={"Authorization": f"Bearer {tokens['site1']}"},
    ).json()
    assert sorted(d["00100020"]["Value"][0] for d in found) == ["U-site1"]


def test_session_login_and_csrf(world: Any) -> None:
    server, _, _ = world
    accounts = Accounts(server.archive.sessions)
    accounts.add_user(
        "websess", "site", trial="T", site="S1", password="correct horse battery staple"
    )
    with httpx.Client(base_url=server.http_url) as client:
        bad = client.post("/api/login", json={"username": "websess", "password": "nope"})
        assert bad.status_code == 401
        login = client.post(
            "/api/login", json={"username": "websess", "password": "correct horse battery staple"}
        )
        assert login.status_code == 200
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        csrf = login.json()["csrf"]
        assert client.get("/api/me").json()["username"] == "websess"
        body, ctype = multipart([to_bytes(make_instance(rows=8, columns=8))])
        forged = client.post("/dicom-web/studies", content=body, headers={"Content-Type": ctype})
        assert forged.status_code == 403 and "CSRF" in forged.json()["message"]
        good = client.post(
            "/dicom-web/studies",
            content=body,
            headers={"Content-Type": ctype, "X-CSRF-Token": csrf},
        )
        assert good.status_code == 200
        client.post("/api/logout")
        assert client.get("/api/me").status_code == 401


def test_every_request_is_audited(world: Any) -> None:
    from ciams.access import AuditTrail

    server, tokens, studies = world
    uid = str(studies["site1"].StudyInstanceUID)
    trail = AuditTrail(server.archive.sessions)
    before = len(trail.events())
    httpx.get(
        f"{server.http_url}/dicom-web/studies/{uid}/metadata",
        headers={"Authorization": f"Bearer {tokens['site2']}"},
    )
    httpx.get(
        f"{server.http_url}/dicom-web/studies/{uid}/metadata",
        headers={"Authorization": "Bearer ciams_forged"},
    )
    # The event is written once the response is out, so the client may be first.
    assert wait_until(lambda: len(trail.events()) >= before + 2, seconds=10)
    events = trail.events(obj=uid)
    assert any(
        e.username == "site2" and e.outcome == "failure" and e.action == "view" for e in events
    )
    failures = trail.events(action="login")
    assert any(e.outcome == "denied" and e.client == "127.0.0.1" for e in failures)
    assert any(e.action == "upload" and e.username == "site1" for e in trail.events(obj=uid))
    assert trail.verify().ok


def test_audit_endpoint_for_admins_and_auditors(world: Any) -> None:
    server, tokens, studies = world
    uid = str(studies["site2"].StudyInstanceUID)
    status = {}
    for user in ROLES:
        r = httpx.get(
            server.http_url + "/api/audit",
            params={"object": uid},
            headers={"Authorization": f"Bearer {tokens[user]}"},
        )
        status[user] = r.status_code
        if r.status_code == 200:
            messages = r.json()
            assert messages and all(
                any(o["ParticipantObjectID"] == uid for o in m["ParticipantObjectIdentification"])
                for m in messages
            )
    assert status == {
        "admin": 200,
        "monitor": 403,
        "site1": 403,
        "site2": 403,
        "reader": 403,
        "researcher": 403,
        "auditor": 200,
    }
    by_user = httpx.get(
        server.http_url + "/api/audit",
        params={"user": "site2", "since": "2000-01-01T00:00:00"},
        headers={"Authorization": f"Bearer {tokens['auditor']}"},
    ).json()
    assert by_user and {m["ActiveParticipant"][0]["UserID"] for m in by_user} == {"site2"}
