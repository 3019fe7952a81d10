"""Authorization matrix on the DIMSE side, with dcmtk tools as the peers.

Each calling AE title is bound to a user of a role (two sites of one trial); the
listener does not let unbound AEs in (``access.anonymous_dicom_on_loopback`` off).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pydicom
import pytest

from ciams.access import Accounts, AuditTrail
from ciams.net import AERegistry
from tests.conftest import running_server
from tests.corpus import make_instance, to_bytes, write
from tests.net.conftest import dcmtk

pytestmark = pytest.mark.dcmtk

USERS = {
    "ADMAE": ("adm", "admin", "", ""),
    "MONAE": ("mon", "monitor", "T", ""),
    "SITE1AE": ("site1", "site", "T", "S1"),
    "SITE2AE": ("site2", "site", "T", "S2"),
    "READAE": ("rd", "reader", "T", ""),
    "RESAE": ("res", "researcher", "T", ""),
    "AUDAE": ("aud", "auditor", "", ""),
}
CALLERS = [*USERS, "NOBODY"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pg_base_url: str | None) -> Any:
    with running_server(
        tmp_path_factory.mktemp("dimse") / "data",
        pg_base_url,
        access={"anonymous_dicom_on_loopback": False},
    ) as server:
        yield from _populate(server)


def _populate(server: Any) -> Any:
    accounts = Accounts(server.archive.sessions)
    for ae, (name, role, trial, site) in USERS.items():
        accounts.add_user(name, role, trial=trial, site=site)
        accounts.bind_ae(ae, name)
    studies = {}
    for site in ("S1", "S2"):
        ds = make_instance(patient_id=f"PID-{site}", rows=16, columns=16)
        result = server.archive.ingest(to_bytes(ds), {"trial": "T", "site": site, "scoped": "1"})
        assert result.ok
        studies[site] = ds
    yield server, studies


def _peer(
    server: Any, ae: str, *args: str | Path, cwd: Path | None = None, files: tuple[Path, ...] = ()
) -> str:
    result = dcmtk(
        *args,
        "-aet",
        ae,
        "-aec",
        server.settings.dicom.ae_title,
        "127.0.0.1",
        str(server.dicom_port),
        *files,
        cwd=cwd,
    )
    return result.stdout + result.stderr


def _find(server: Any, ae: str, out: Path) -> set[str] | str:
    out.mkdir(parents=True)
    log = _peer(
        server,
        ae,
        "findscu",
        "-v",
        "-S",
        "-X",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientID",
        "-k",
        "StudyInstanceUID",
        cwd=out,
    )
    if "Status: 0x124" in log or "Not Authorized" in log:
        return "refused"
    return {str(pydicom.dcmread(p).PatientID) for p in out.glob("rsp*.dcm")}


def test_c_find_matrix(world: Any, tmp_path: Path) -> None:
    server, _ = world
    seen = {ae: _find(server, ae, tmp_path / ae) for ae in CALLERS}
    both = {"PID-S1", "PID-S2"}
    assert seen == {
        "ADMAE": both,
        "MONAE": both,
        "SITE1AE": {"PID-S1"},
        "SITE2AE": {"PID-S2"},
        "READAE": both,
        "RESAE": "refused",
        "AUDAE": "refused",
        "NOBODY": "refused",
    }


def _stored_ok(log: str) -> bool:
    return "Received Store Response (Success)" in log


def test_c_store_matrix(world: Any, tmp_path: Path) -> None:
    server, _ = world
    outcome = {}
    for ae in CALLERS:
        path = write(make_instance(patient_id=f"UP-{ae}", rows=8, columns=8), tmp_path / ae)
        log = _peer(server, ae, "storescu", "-v", files=(path,))
        outcome[ae] = _stored_ok(log)
    assert outcome == {
        "ADMAE": True,
        "MONAE": False,
        "SITE1AE": True,
        "SITE2AE": True,
        "READAE": False,
        "RESAE": False,
        "AUDAE": False,
        "NOBODY": False,
    }
    # site uploads belong to the uploader's site: site2 cannot see site1's
    assert "UP-SITE1AE" not in _find(server, "SITE2AE", tmp_path / "after")


def _get(server: Any, ae: str, study: str, out: Path) -> int | str:
    out.mkdir(parents=True)
    log = _peer(
        server,
        ae,
        "getscu",
        "-v",
        "-S",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study}",
        cwd=out,
    )
    if "0x124" in log or "Not Authorized" in log:
        return "refused"
    return len(list(out.iterdir()))


def test_c_get_matrix(world: Any, tmp_path: Path) -> None:
    server, studies = world
    uid = str(studies["S1"].StudyInstanceUID)
    seen = {ae: _get(server, ae, uid, tmp_path / ae) for ae in CALLERS}
    assert seen == {
        "ADMAE": 1,
        "MONAE": 1,
        "SITE1AE": 1,
        "SITE2AE": 0,  # another site's study: nothing, as for a missing one
        "READAE": "refused",
        "RESAE": "refused",
        "AUDAE": "refused",
        "NOBODY": "refused",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_c_move_only_to_own_ae(world: Any, tmp_path: Path) -> None:
    server, studies = world
    port = _free_port()
    AERegistry(server.archive.sessions).add("SITE1WS", "127.0.0.1", port, owner="site1")
    uid = str(studies["S1"].StudyInstanceUID)
    results = {}
    for ae in ("SITE1AE", "SITE2AE", "ADMAE"):
        out = tmp_path / f"move-{ae}"
        out.mkdir()
        log = _peer(
            server,
            ae,
            "movescu",
            "-v",
            "-S",
            "-aem",
            "SITE1WS",
            "+P",
            str(port),
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={uid}",
            cwd=out,
        )
        # movescu acts as SITE1WS's storage SCP itself (same port)
        results[ae] = ("MoveDestinationUnknown" in log, len(list(out.glob("*"))))
    assert results["SITE1AE"] == (False, 1)
    assert results["ADMAE"] == (False, 1)
    assert results["SITE2AE"][0] is True and results["SITE2AE"][1] == 0


def test_dimse_operations_are_audited(world: Any, tmp_path: Path) -> None:
    server, studies = world
    _find(server, "SITE1AE", tmp_path / "f")
    _find(server, "NOBODY", tmp_path / "n")
    trail = AuditTrail(server.archive.sessions)
    events = trail.events()
    assert any(
        e.interface == "dimse"
        and e.action == "query"
        and e.username == "site1"
        and str(studies["S1"].StudyInstanceUID) in e.objects
        for e in events
    )
    assert any(
        e.interface == "dimse" and e.outcome == "denied" and "NOBODY" in e.detail for e in events
    )
    assert trail.verify().ok


def test_logs_do_not_reveal_other_sites(
    world: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, studies = world
    caplog.set_level("DEBUG")
    _find(server, "SITE2AE", tmp_path / "q")
    _get(server, "SITE2AE", str(studies["S1"].StudyInstanceUID), tmp_path / "g")
    text = caplog.text
    assert "PID-S1" not in text
