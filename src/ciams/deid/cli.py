"""``ciams deid INPUT OUTPUT``: de-identify files, folders and ZIP archives.

The typer front end of :func:`ciams.deid.command.execute` (see there for the exit
status and the trial secret).  ``python -m ciams.deid`` runs the same command
with a lighter start-up.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ciams.deid.command import SECRET_ENV, execute


def deid_command(
    input: Path = typer.Argument(..., exists=True, help="a DICOM file, a folder or a .zip"),
    output: Path = typer.Argument(..., help="output folder (created); quarantine/ inside"),
    recipe: Path | None = typer.Option(
        None, "--recipe", exists=True, dir_okay=False, help="trial recipe YAML (default: built-in)"
    ),
    subjects: Path | None = typer.Option(
        None,
        "--subjects",
        exists=True,
        dir_okay=False,
        help="CSV with columns patient_id,subject_id",
    ),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="worker processes (0 = all cores)"),
    secret_file: Path | None = typer.Option(
        None, "--secret-file", exists=True, dir_okay=False, help=f"trial secret (or ${SECRET_ENV})"
    ),
    site: str | None = typer.Option(None, "--site", help="site code for per-site recipe rules"),
) -> None:
    """De-identify DICOM files with a trial recipe (PS3.15 Annex E + trial rules)."""
    if secret_file is not None and len(secret_file.read_bytes().strip()) < 16:
        raise typer.BadParameter(
            "the secret file must hold at least 16 bytes", param_hint="--secret-file"
        )
    status = execute(
        input,
        output,
        recipe=recipe,
        subjects=subjects,
        jobs=jobs,
        secret_file=secret_file,
        site=site,
    )
    if status:
        raise typer.Exit(status)


def main() -> None:  # pragma: no cover - thin wrapper
    """Run the command stand-alone: ``python -m ciams.deid.cli`` (= ``python -m ciams.deid``)."""
    from ciams.deid.command import main as run

    raise SystemExit(run())


if __name__ == "__main__":  # pragma: no cover
    main()
