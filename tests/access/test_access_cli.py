"""`ciams user` and `ciams audit` commands."""

from __future__ import annotations

import csv
from pathlib import Path

from typer.testing import CliRunner

from ciams.access import Accounts
from ciams.archive import Archive
from ciams.cli import app
from ciams.config import load_settings

runner = CliRunner()


def test_user_lifecycle_and_audit(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "d")]
    added = runner.invoke(
        app, ["user", "add", "s1", "--role", "site", "--trial", "T", "--site", "S1", *data]
    )
    assert added.exit_code == 0, added.output
    password = added.output.strip().splitlines()[-1]
    token = runner.invoke(app, ["user", "token", "s1", "--expires", "7", *data]).output.strip()
    assert token.startswith("ciams_")
    with Archive(load_settings(data_dir=tmp_path / "d")) as archive:
        accounts = Accounts(archive.sessions)
        assert accounts.authenticate("s1", password).grants == (("T", "S1"),)
        assert accounts.authenticate_token(token).username == "s1"
    listing = runner.invoke(app, ["user", "list", *data])
    assert "s1" in listing.output and "T/S1" in listing.output
    assert runner.invoke(app, ["user", "disable", "s1", *data]).exit_code == 0
    assert "disabled" in runner.invoke(app, ["user", "list", *data]).output
    bad = runner.invoke(app, ["user", "add", "x", "--role", "root", *data])
    assert bad.exit_code == 2 and "unknown role" in bad.output

    verify = runner.invoke(app, ["audit", "verify", *data])
    assert verify.exit_code == 0 and "intact" in verify.output
    out = tmp_path / "audit.csv"
    assert runner.invoke(app, ["audit", "export", str(out), *data]).exit_code == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["detail"].split()[1] for r in rows[:3]] == ["add", "token", "disable"]

    import sqlite3

    db = sqlite3.connect(tmp_path / "d" / "index.db")
    db.execute("UPDATE audit_events SET detail = 'nothing happened' WHERE seq = 1")
    db.commit()
    db.close()
    tampered = runner.invoke(app, ["audit", "verify", *data])
    assert tampered.exit_code == 1 and "event 1: content changed" in tampered.output
