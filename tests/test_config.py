"""Settings precedence and the default file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from ciams.config import dump_default, load_settings
from ciams.errors import ConfigError


def test_precedence_file_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ciams.toml").write_text(
        '[dicom]\nport = 5555\nae_title = "FROMFILE"\n[tasks]\nworkers = 7\nbackend = "embedded"\n'
    )
    monkeypatch.setenv("CIAMS_TASKS__BACKEND", "redis")
    settings = load_settings(data_dir=tmp_path, dicom={"ae_title": "FROMFLAG"})
    assert settings.dicom.port == 5555  # file
    assert settings.tasks.workers == 7  # file
    assert settings.tasks.backend == "redis"  # environment beats file
    assert settings.dicom.ae_title == "FROMFLAG"  # flag beats both


def test_invalid_values_say_what(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="on_conflict"):
        load_settings(data_dir=tmp_path, archive={"on_conflict": "overwrite"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_dump_default_is_valid_toml_with_defaults(tmp_path: Path) -> None:
    text = dump_default()
    parsed = tomllib.loads(text)
    assert parsed["dicom"]["ae_title"] == "CIAMS"
    assert parsed["archive"]["on_conflict"] == "reject"
    (tmp_path / "ciams.toml").write_text(text)
    assert load_settings(data_dir=tmp_path).dicom.port == 11112
