"""The de-identification command: ``ciams deid`` and ``python -m ciams.deid``.

The ``ciams`` console script (:mod:`ciams.entry`) sends ``ciams deid`` here directly
(argparse; no typer, no pydantic, and no rich unless stderr is a terminal), so it
starts in about 0.1 s, which matters for batch jobs of a few hundred files. The typer
twin in :mod:`ciams.deid.cli` lists the command in ``ciams --help`` and runs the same
:func:`execute`.

Exit status: 0 when every DICOM input was de-identified (non-DICOM files are
skipped and listed), 2 when anything was quarantined (the summary and
``OUTPUT/quarantine/*.reason.json`` say why), 1 for a usage error (bad recipe,
unreadable subjects file) or when an input could be neither written nor
quarantined (disk full, permissions).  The trial secret comes from ``--secret-file`` or the
``CIAMS_DEID_SECRET`` environment variable; without one a random secret is used for
this run only, so UIDs, date shifts and generated codes will not match other runs.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ciams.errors import CiamsError

SECRET_ENV = "CIAMS_DEID_SECRET"
STATUSES = ("deidentified", "duplicate", "quarantined", "skipped", "failed")


class UsageError(Exception):
    """A bad argument (exit status 1)."""


class _Printer:
    """Messages to stderr: rich when it is a terminal, plain text otherwise."""

    def __init__(self, rich: bool | None = None) -> None:
        self.rich = sys.stderr.isatty() if rich is None else rich
        self.console: Any = None
        if self.rich:
            from rich.console import Console

            self.console = Console(stderr=True)

    def say(self, text: str, style: str = "") -> None:
        if self.console is not None:
            self.console.print(f"[{style}]{text}[/]" if style else text)
        else:
            print(text, file=sys.stderr)


def load_secret(secret_file: Path | None, out: _Printer) -> bytes:
    """The trial secret: ``--secret-file``, else ``$CIAMS_DEID_SECRET``, else random."""
    if secret_file is not None:
        data = secret_file.read_bytes().strip()
        if len(data) < 16:
            raise UsageError("--secret-file: the secret file must hold at least 16 bytes")
        return data
    env = os.environ.get(SECRET_ENV, "").encode()
    if env:
        return env
    out.say(
        f"no trial secret (--secret-file or {SECRET_ENV}): using a random one; "
        "UIDs, date shifts and generated codes will differ from other runs",
        "yellow",
    )
    return secrets.token_bytes(32)


def execute(
    input: Path,
    output: Path,
    *,
    recipe: Path | None = None,
    subjects: Path | None = None,
    jobs: int = 0,
    secret_file: Path | None = None,
    site: str | None = None,
    rich: bool | None = None,
) -> int:
    """Run ``ciams deid``; returns the exit status (see the module docstring)."""
    from ciams.deid.batch import run_batch
    from ciams.deid.recipe import default_recipe, load_recipe
    from ciams.deid.subjects import load_subjects

    out = _Printer(rich)
    # decoder failures are reported per file (quarantine reason), not as tracebacks
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    try:
        rec = load_recipe(recipe) if recipe else default_recipe()
        subject_map = load_subjects(subjects) if subjects else {}
    except CiamsError as exc:
        out.say(f"error: {exc}", "red")
        return 1
    if output.resolve().is_relative_to(input.resolve()) and input.is_dir():
        out.say("error: OUTPUT must not be inside INPUT", "red")
        return 1
    try:
        key = load_secret(secret_file, out)
    except UsageError as exc:
        out.say(f"error: {exc}", "red")
        return 1
    on_total: Callable[[int], None] | None = None
    on_progress: Callable[[int], None] | None = None
    progress: Any = None
    if out.console is not None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("[bold]de-identifying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=out.console,
            transient=False,
        )
        task = progress.add_task("deid", total=None)
        progress.start()
        on_total = lambda n: progress.update(task, total=n)  # noqa: E731
        on_progress = lambda n: progress.advance(task, n)  # noqa: E731
    try:
        summary = run_batch(
            input,
            output,
            rec,
            subject_map,
            key,
            jobs=jobs,
            site=site,
            on_total=on_total,
            on_progress=on_progress,
        )
    finally:
        if progress is not None:
            progress.stop()
    counts = [(status, summary.count(status)) for status in STATUSES]
    if out.console is not None:
        from rich.table import Table

        table = Table(title=f"ciams deid — recipe {rec.label}")
        table.add_column("result")
        table.add_column("count", justify="right")
        for status, n in counts:
            table.add_row(status, str(n))
        out.console.print(table)
        if summary.quarantined:
            q = Table(title="quarantined (see quarantine/*.reason.json)")
            q.add_column("input")
            q.add_column("reason")
            for o in summary.quarantined[:50]:
                q.add_row(o.name, o.reason)
            out.console.print(q)
    else:
        out.say(f"ciams deid — recipe {rec.label}")
        out.say(", ".join(f"{status}: {n}" for status, n in counts))
        if summary.quarantined:
            out.say("quarantined (see quarantine/*.reason.json):")
            for o in summary.quarantined[:50]:
                out.say(f"  {o.name}: {o.reason}")
    new = sorted({o.new_subject for o in summary.outcomes if o.new_subject})
    if new:
        path = output / "new-subjects.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["patient_id", "subject_id"])
            writer.writerows(new)
        out.say(f"{len(new)} new subject code(s) written to {path} (keep it at the site)")
    if summary.count("failed"):
        out.say("some inputs could be neither written nor quarantined", "red")
        return 1
    return 2 if summary.quarantined else 0


def _existing(kind: str, *, file: bool = False) -> Callable[[str], Path]:
    def check(value: str) -> Path:
        path = Path(value)
        if not path.exists() or (file and not path.is_file()):
            raise argparse.ArgumentTypeError(f"{kind} {value!r} does not exist")
        return path

    return check


def _jobs(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("--jobs must be 0 (all cores) or more")
    return n


def main(argv: list[str] | None = None, prog: str = "python -m ciams.deid") -> int:
    """``ciams deid`` / ``python -m ciams.deid INPUT OUTPUT [options]``; returns the
    exit status."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="De-identify DICOM files with a trial recipe (PS3.15 Annex E + trial rules).",
    )
    parser.add_argument("input", type=_existing("input"), help="a DICOM file, a folder or a .zip")
    parser.add_argument("output", type=Path, help="output folder (created); quarantine/ inside")
    parser.add_argument(
        "--recipe", type=_existing("recipe", file=True), help="trial recipe YAML (built-in)"
    )
    parser.add_argument(
        "--subjects",
        type=_existing("subjects file", file=True),
        help="CSV with columns patient_id,subject_id",
    )
    parser.add_argument(
        "--jobs", "-j", type=_jobs, default=0, help="worker processes (0 = all cores)"
    )
    parser.add_argument(
        "--secret-file",
        type=_existing("secret file", file=True),
        help=f"trial secret (or ${SECRET_ENV})",
    )
    parser.add_argument("--site", help="site code for per-site recipe rules")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return execute(
        args.input,
        args.output,
        recipe=args.recipe,
        subjects=args.subjects,
        jobs=args.jobs,
        secret_file=args.secret_file,
        site=args.site,
    )
