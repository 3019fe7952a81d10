"""The ``ciams`` command line: import, ls, export, fsck, ae, config, quarantine."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
from typer.testing import CliRunner

from ciams.cli import app
from tests.corpus import make_series, vendor_file, write

runner = CliRunner()


def _corpus(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = tmp_path / "in"
    series = list(make_series(5, rows=16, columns=16, patient_id="CLI1"))
    for n, ds in enumerate(series[:3]):
        write(ds, folder / f"a{n}.dcm")
    (folder / "notes.txt").write_text("not an image")
    zpath = tmp_path / "more.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for n, ds in enumerate(series[3:]):
            p = write(ds, tmp_path / "z" / f"b{n}.dcm")
            zf.write(p, f"sub/b{n}.dcm")
        zf.writestr("sub/broken.dcm", b"DICM" * 10)
    return folder, zpath, str(series[0].StudyInstanceUID)


def test_import_ls_export_fsck(tmp_path: Path) -> None:
    folder, zpath, study_uid = _corpus(tmp_path)
    data = ["--data-dir", str(tmp_path / "data")]
    result = runner.invoke(app, ["import", str(folder), str(zpath), *data])
    assert result.exit_code == 1, result.output  # some inputs were rejected
    assert "stored" in result.output and "rejected" in result.output
    assert "notes.txt" in result.output and "broken.dcm" in result.output
    again = runner.invoke(app, ["import", str(folder / "a0.dcm"), *data])
    assert again.exit_code == 0 and "duplicate" in again.output

    listing = runner.invoke(app, ["ls", *data, "--patient-id", "CLI*", "--json"])
    assert listing.exit_code == 0
    rows = [json.loads(line) for line in listing.output.splitlines()]
    assert [(r["study_instance_uid"], r["instances"], r["series"]) for r in rows] == [
        (study_uid, 5, 1)
    ]
    assert runner.invoke(app, ["ls", *data, "--patient-id", "NOPE", "--json"]).output == ""
    assert "1 studies" in runner.invoke(app, ["ls", *data]).output

    out = tmp_path / "export"
    exported = runner.invoke(app, ["export", study_uid, str(out), *data])
    assert exported.exit_code == 0, exported.output
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 5
    assert {pydicom.dcmread(f).StudyInstanceUID for f in files} == {study_uid}

    missing = runner.invoke(app, ["export", "1.2.3.404", str(out), *data])
    assert missing.exit_code == 2 and "no such study" in missing.output

    assert runner.invoke(app, ["fsck", *data]).exit_code == 0
    victim = next((tmp_path / "data" / "storage").rglob("*.dcm"))
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    broken = runner.invoke(app, ["fsck", *data])
    assert broken.exit_code == 1 and "corrupt: 1" in broken.output

    from ciams.access import AuditTrail
    from ciams.archive import Archive
    from ciams.config import load_settings

    with Archive(load_settings(data_dir=tmp_path / "data")) as archive:
        trail = AuditTrail(archive.sessions)
        exports = trail.events(action="export", obj=study_uid)
        assert [e.outcome for e in exports] == ["success"]
        assert "5 instances" in exports[0].detail
        assert trail.events(action="upload", obj=study_uid)
        assert trail.verify().ok

    q = runner.invoke(app, ["quarantine", "ls", *data])
    assert q.exit_code == 0 and "not a DICOM" in q.output.replace("\n", " ")


def test_console_script_runs(tmp_path: Path) -> None:
    path = vendor_file("CT_small.dcm")
    proc = subprocess.run(
        [sys.executable, "-m", "ciams", "import", str(path), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stored" in proc.stdout


def test_config_dump_default() -> None:
    result = runner.invoke(app, ["config", "dump-default"])
    assert result.exit_code == 0
    assert 'ae_title = "CIAMS"' in result.output
