"""The subject map: ``patient_id,subject_id`` CSV (one row per patient)."""

from __future__ import annotations

import csv
from pathlib import Path

from ciams.deid.errors import RecipeError


def load_subjects(path: Path | str) -> dict[str, str]:
    """Read a subjects CSV with a header row ``patient_id,subject_id``."""
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"patient_id", "subject_id"} <= set(reader.fieldnames):
                raise RecipeError(f"{p} needs the columns patient_id,subject_id")
            mapping: dict[str, str] = {}
            for lineno, row in enumerate(reader, start=2):
                pid, sid = (row["patient_id"] or "").strip(), (row["subject_id"] or "").strip()
                if not pid or not sid:
                    raise RecipeError(f"{p}:{lineno}: empty patient_id or subject_id")
                if mapping.get(pid, sid) != sid:
                    raise RecipeError(f"{p}:{lineno}: a patient has two subject codes")
                mapping[pid] = sid
    except OSError as exc:
        raise RecipeError(f"cannot read subjects file {p}: {exc.strerror}") from exc
    return mapping
