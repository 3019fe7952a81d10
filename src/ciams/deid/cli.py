"""``ciams deid INPUT OUTPUT``: de-identify files, folders and ZIP archives.

Exit status: 0 when every DICOM input was de-identified (non-DICOM files are
skipped and listed), 2 when anything was quarantined (the summary and
``OUTPUT/quarantine/*.reason.json`` say why), 1 for a usage error (bad recipe,
unreadable subjects file) or when an input could be neither written nor
quarantined (disk full, permissions).  The trial secret comes from ``--secret-file`` or the
``CIAMS_DEID_SECRET`` environment variable; without one a random secret is used for
this run only, so UIDs, date shifts and generated codes will not match other runs.
"""

from __future__ import annotations

import csv
import logging
import os
import secrets
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ciams.deid.batch import run_batch
from ciams.deid.recipe import default_recipe, load_recipe
from ciams.deid.subjects import load_subjects
from ciams.errors import CiamsError

SECRET_ENV = "CIAMS_DEID_SECRET"


def _secret(secret_file: Path | None, console: Console) -> bytes:
    if secret_file is not None:
        data = secret_file.read_bytes().strip()
        if len(data) < 16:
            raise typer.BadParameter(
                "the secret file must hold at least 16 bytes", param_hint="--secret-file"
            )
        return data
    env = os.environ.get(SECRET_ENV, "").encode()
    if env:
        return env
    console.print(
        f"[yellow]no trial secret (--secret-file or {SECRET_ENV}): using a random one; "
        "UIDs, date shifts and generated codes will differ from other runs[/]"
    )
    return secrets.token_bytes(32)


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
    console = Console(stderr=True)
    # decoder failures are reported per file (quarantine reason), not as tracebacks
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    try:
        rec = load_recipe(recipe) if recipe else default_recipe()
        subject_map = load_subjects(subjects) if subjects else {}
    except CiamsError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    if output.resolve().is_relative_to(input.resolve()) and input.is_dir():
        console.print("[red]error:[/] OUTPUT must not be inside INPUT")
        raise typer.Exit(1)
    key = _secret(secret_file, console)
    with Progress(
        TextColumn("[bold]de-identifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("deid", total=None)
        summary = run_batch(
            input,
            output,
            rec,
            subject_map,
            key,
            jobs=jobs,
            site=site,
            on_total=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
        )
    table = Table(title=f"ciams deid — recipe {rec.label}")
    table.add_column("result")
    table.add_column("count", justify="right")
    for status in ("deidentified", "duplicate", "quarantined", "skipped", "failed"):
        table.add_row(status, str(summary.count(status)))
    console.print(table)
    if summary.quarantined:
        q = Table(title="quarantined (see quarantine/*.reason.json)")
        q.add_column("input")
        q.add_column("reason")
        for o in summary.quarantined[:50]:
            q.add_row(o.name, o.reason)
        console.print(q)
    new = sorted({o.new_subject for o in summary.outcomes if o.new_subject})
    if new:
        path = output / "new-subjects.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["patient_id", "subject_id"])
            writer.writerows(new)
        console.print(f"{len(new)} new subject code(s) written to {path} (keep it at the site)")
    if summary.count("failed"):
        console.print("[red]some inputs could be neither written nor quarantined[/]")
        raise typer.Exit(1)
    if summary.quarantined:
        raise typer.Exit(2)


def main() -> None:  # pragma: no cover - thin wrapper
    """Run the command stand-alone: ``python -m ciams.deid.cli``."""
    logging.basicConfig(level=logging.WARNING)
    app = typer.Typer(add_completion=False)
    app.command()(deid_command)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
