"""``ciams deid`` on folders and ZIPs: outputs, quarantine with reasons, exit status."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pydicom
import typer
from typer.testing import CliRunner

from ciams.deid.cli import deid_command
from ciams.deid.synthetic import ct_series
from ciams.deid.writer import serialize

app = typer.Typer()
app.command()(deid_command)


def _write_inputs(folder: Path) -> list[pydicom.Dataset]:
    folder.mkdir()
    series = ct_series(3, patient_id="MRN0001") + ct_series(1, patient_id="UNKNOWN9")
    for i, ds in enumerate(series):
        (folder / f"DOE_JOHN_{i}.dcm").write_bytes(serialize(ds))
    (folder / "notes.txt").write_text("not DICOM")
    return series


def _subjects(tmp_path: Path) -> Path:
    csv = tmp_path / "subjects.csv"
    csv.write_text("patient_id,subject_id\nMRN0001,LOCAT-0001\n")
    return csv


def test_folder_with_quarantine(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CIAMS_DEID_SECRET", "cli-test-secret-0123456789")
    src = tmp_path / "in"
    _write_inputs(src)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, [str(src), str(out), "--subjects", str(_subjects(tmp_path)), "--jobs", "2"]
    )
    assert result.exit_code == 2, result.output  # something was quarantined
    files = sorted((out / "LOCAT-0001").glob("*.dcm"))
    assert len(files) == 3
    assert all("DOE" not in f.name for f in files)
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.PatientName == "LOCAT-0001" and ds.PatientIdentityRemoved == "YES"
    reasons = list((out / "quarantine").glob("*.reason.json"))
    assert len(reasons) == 1
    body = json.loads(reasons[0].read_text())
    assert body["code"] == "deid-unknown-subject"
    assert (out / "quarantine" / reasons[0].name.removesuffix(".reason.json")).exists()
    # a second run into the same folder: same secret -> same bytes, nothing overwritten
    again = CliRunner().invoke(
        app, [str(src), str(out), "--subjects", str(_subjects(tmp_path)), "--jobs", "1"]
    )
    assert again.exit_code == 2
    assert "duplicate" in again.output


def test_zip_input_all_good(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CIAMS_DEID_SECRET", "cli-test-secret-0123456789")
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, ds in enumerate(ct_series(2, patient_id="MRN0001")):
            zf.writestr(f"DOE/IMG{i}.dcm", serialize(ds))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, [str(archive), str(out), "--subjects", str(_subjects(tmp_path))]
    )
    assert result.exit_code == 0, result.output
    assert len(list((out / "LOCAT-0001").glob("*.dcm"))) == 2
    assert not (out / "quarantine").exists()


def test_bad_recipe_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("recipe: 1\nname: x\nversion: 1\nprofile: {options: [retain_everything]}\n")
    src = tmp_path / "in"
    src.mkdir()
    result = CliRunner().invoke(app, [str(src), str(tmp_path / "out"), "--recipe", str(bad)])
    assert result.exit_code == 1
    assert "retain_everything" in result.output


def test_ciams_deid_console_script(tmp_path: Path) -> None:
    """The installed ``ciams deid`` (light entry point) de-identifies like the CLI."""
    import os
    import shutil
    import subprocess
    import sys

    exe = shutil.which("ciams", path=str(Path(sys.executable).parent)) or "ciams"
    src = tmp_path / "in"
    _write_inputs(src)
    out = tmp_path / "out"
    env = dict(os.environ, CIAMS_DEID_SECRET="cli-test-secret-0123456789")
    run = subprocess.run(
        [exe, "deid", str(src), str(out), "--subjects", str(_subjects(tmp_path)), "--jobs", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert len(list((out / "LOCAT-0001").glob("*.dcm"))) == 3
    usage = subprocess.run([exe, "deid", "--help"], capture_output=True, text=True, check=False)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: ciams deid")
