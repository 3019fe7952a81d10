"""Several DICOM listener processes on one port (dicom.workers), one archive."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ciams.access import AuditTrail
from tests.conftest import wait_until
from tests.corpus import make_series, write

pytestmark = pytest.mark.dcmtk


def test_two_listener_processes_share_the_port(
    make_server: Callable[..., Any], tmp_path: Path
) -> None:
    import os

    server = make_server(dicom={"workers": 2})
    markers = list((server.settings.data_dir / "run").glob("*.json"))
    pids = {int(m.stem.split("-")[0]) for m in markers}
    assert len(pids) == 2 and os.getpid() in pids  # this process and one worker

    folders = []
    for n in range(4):
        folder = tmp_path / f"in{n}"
        for ds in make_series(10, rows=32, columns=32, patient_id=f"W{n}"):
            write(ds, folder / f"{ds.SOPInstanceUID}.dcm")
        folders.append(folder)
    env = dict(os.environ, TCP_NODELAY="1")
    procs = [
        subprocess.Popen(
            [
                "storescu",
                "-aec",
                server.settings.dicom.ae_title,
                "-aet",
                f"SCU{n}",
                "+sd",
                "127.0.0.1",
                str(server.dicom_port),
                str(folder),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n, folder in enumerate(folders)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    assert server.archive.counts()["instances"] == 40
    assert server.archive.fsck().ok
    trail = AuditTrail(server.archive.sessions)

    def audited() -> int:
        uploads = [e for e in trail.events(action="upload") if e.interface == "dimse"]
        return sum(int(e.detail.split(": ")[-1].split()[0]) for e in uploads)

    # Each association's upload event is written at its release, which storescu
    # does not wait for.
    assert wait_until(lambda: audited() == 40, seconds=10), audited()
    assert trail.verify().ok
