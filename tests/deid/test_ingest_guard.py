"""The central ingest refuses identified data for a trial whose recipe requires
de-identification, on every way in (STOW-RS, C-STORE, import)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ciams.access import Accounts
from ciams.deid import Deidentifier, default_recipe
from tests.corpus import make_instance, to_bytes, write
from tests.net.conftest import dcmtk
from tests.web.conftest import multipart

RECIPE = Path(__file__).resolve().parents[2] / "src" / "ciams" / "deid" / "data" / "default.yaml"


def test_identified_upload_is_quarantined(make_server: Callable[..., Any], tmp_path: Path) -> None:
    server = make_server(
        deid={"trial_recipes": {"LOCAT": RECIPE}},
        access={"anonymous_dicom_on_loopback": False},
    )
    accounts = Accounts(server.archive.sessions)
    accounts.add_user("s1", "site", trial="LOCAT", site="S01")
    token = accounts.issue_token("s1")
    accounts.bind_ae("S01AE", "s1")
    headers = {"Authorization": f"Bearer {token}"}

    identified = make_instance(patient_id="MRN-4711", patient_name="Doe^Jane", rows=8, columns=8)
    body, ctype = multipart([to_bytes(identified)])
    refused = httpx.post(
        server.http_url + "/dicom-web/studies",
        content=body,
        headers={**headers, "Content-Type": ctype},
    )
    assert refused.status_code == 409
    failed = refused.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xC000]
    reasons = [e.reason for e in server.archive.quarantine.entries()]
    assert any("not de-identified" in r and "Patient Identity Removed" in r for r in reasons)
    assert server.archive.counts()["instances"] == 0

    path = write(make_instance(patient_id="MRN-4712", rows=8, columns=8), tmp_path / "x.dcm")
    log = dcmtk(
        "storescu",
        "-v",
        "-aet",
        "S01AE",
        "-aec",
        server.settings.dicom.ae_title,
        "127.0.0.1",
        str(server.dicom_port),
        path,
    )
    assert "Success" not in log.stdout + log.stderr
    assert server.archive.counts()["instances"] == 0

    clean = Deidentifier(default_recipe(), {"MRN-4711": "LOCAT-0001"}, os.urandom(32))
    result = clean.deidentify(identified)
    body, ctype = multipart([to_bytes(result.dataset)])
    accepted = httpx.post(
        server.http_url + "/dicom-web/studies",
        content=body,
        headers={**headers, "Content-Type": ctype},
    )
    assert accepted.status_code == 200, accepted.text
    assert server.archive.counts()["instances"] == 1


def test_other_trials_are_not_guarded(make_server: Callable[..., Any]) -> None:
    server = make_server(deid={"trial_recipes": {"LOCAT": RECIPE}})
    result = server.archive.ingest(
        to_bytes(make_instance(rows=8, columns=8)), {"trial": "OPEN", "site": "S1"}
    )
    assert result.ok
