"""The ``ciams`` command: one entry point, sub-commands per domain."""

from __future__ import annotations

import json
import logging
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ciams import __version__
from ciams.access.cli import audit_app, user_app
from ciams.config import Settings, dump_default, load_settings
from ciams.deid.cli import deid_command
from ciams.errors import CiamsError

app = typer.Typer(
    name="ciams",
    help="CIAMS: central imaging archive and management system for multicenter trials.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
ae_app = typer.Typer(help="Remote DICOM application entities (C-MOVE destinations).")
config_app = typer.Typer(help="Configuration.")
quarantine_app = typer.Typer(help="Inputs refused at ingest, kept with their reasons.")
app.add_typer(ae_app, name="ae")
app.add_typer(config_app, name="config")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(user_app, name="user")
app.add_typer(audit_app, name="audit")

console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", "-d", help="Data folder (default ./data or CIAMS_DATA_DIR)."),
]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="TOML configuration file.")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL (default SQLite in the data folder)."),
]


def _settings(
    config: Path | None, data_dir: Path | None, database_url: str | None = None, **extra: Any
) -> Settings:
    return load_settings(config, data_dir=data_dir, database_url=database_url, **extra)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("pynetdicom", "huey", "alembic", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _audit(
    archive: Any, action: str, objects: tuple[str, ...], detail: str, outcome: str = "success"
) -> None:
    """Record what a command did to the archive in the audit trail (as the local admin)."""
    import getpass

    from ciams.access import AuditTrail, Event

    AuditTrail(archive.sessions).record(
        Event(
            action=action,
            outcome=outcome,
            username=f"cli:{getpass.getuser()}",
            role="admin",
            client="localhost",
            interface="cli",
            objects=objects,
            detail=detail,
        )
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _fail(exc: CiamsError) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {exc.message}")
    if exc.hint:
        err_console.print(f"[dim]{exc.hint}[/dim]")
    return typer.Exit(code=2)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"ciams {__version__}")


@app.command()
def serve(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port (default 8080).")] = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM port (default 11112).")] = None,
    ae_title: Annotated[str | None, typer.Option(help="Our AE title (default CIAMS).")] = None,
    dicom_workers: Annotated[
        int | None, typer.Option(help="DICOM listener processes sharing the port (default 1).")
    ] = None,
    http_workers: Annotated[
        int | None, typer.Option(help="HTTP processes sharing the port (default 1).")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address for both listeners (default 127.0.0.1).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the archive: DICOM (C-ECHO/STORE/FIND/MOVE/GET) and HTTP (DICOMweb, API)."""
    _setup_logging(verbose)
    http: dict[str, Any] = {}
    dicom: dict[str, Any] = {}
    if http_port is not None:
        http["port"] = http_port
    if dicom_port is not None:
        dicom["port"] = dicom_port
    if ae_title is not None:
        dicom["ae_title"] = ae_title
    if dicom_workers is not None:
        dicom["workers"] = dicom_workers
    if http_workers is not None:
        http["workers"] = http_workers
    if host is not None:
        http["host"] = dicom["host"] = host
    try:
        settings = _settings(config, data_dir, database_url, http=http or None, dicom=dicom or None)
        from ciams.server import Server

        server = Server(settings)
    except CiamsError as exc:
        raise _fail(exc) from exc
    from ciams.access import Accounts

    first_password = Accounts(server.archive.sessions).ensure_first_admin()
    d, h = settings.dicom, settings.http
    console.print(f"[bold green]CIAMS {__version__}[/bold green] archive in {settings.data_dir}")
    if first_password:
        console.print(
            "  [bold yellow]first administrator created[/bold yellow]: user 'admin', "
            f"one-time password [bold]{first_password}[/bold] (shown only now; "
            "change it with `ciams user passwd admin`)"
        )
    console.print(f"  index     {settings.db_url.split('@')[-1]}")
    console.print(f"  web       http://{h.host}:{h.port}/")
    console.print(f"  DICOMweb  http://{h.host}:{h.port}/dicom-web")
    console.print(f"  DICOM     AE title {d.ae_title} on {d.host}:{d.port}")
    console.print(f"  try       echoscu -aec {d.ae_title} {d.host} {d.port}")
    console.print(f"            storescu -aec {d.ae_title} {d.host} {d.port} +sd FOLDER")
    console.print("  stop with Ctrl-C")
    server.run()


@app.command()
def worker(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
    workers: Annotated[int, typer.Option(help="Worker threads.")] = 2,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Consume background tasks from Redis (tasks.backend = 'redis')."""
    _setup_logging(verbose)
    from ciams.archive import Archive
    from ciams.tasks import TaskRunner

    settings = _settings(config, data_dir, database_url)
    if settings.tasks.backend != "redis":
        raise _fail(
            CiamsError(
                "the task backend is 'embedded': the server consumes its own tasks",
                hint="set CIAMS_TASKS__BACKEND=redis (and tasks.redis_url) to run workers",
            )
        )
    with Archive(settings) as archive:
        TaskRunner(settings, archive, produce=False).run_worker(workers)


def _iter_inputs(paths: list[Path]) -> Iterator[tuple[str, Any]]:
    """(label, path-or-(zip, member)) for every file under the given paths."""
    for path in paths:
        if path.is_dir():
            for sub in sorted(p for p in path.rglob("*") if p.is_file()):
                yield from _iter_inputs([sub])
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        yield f"{path}:{info.filename}", (path, info.filename)
        elif path.is_file():
            yield str(path), path
        else:
            yield str(path), None


def _read_input(item: Any) -> bytes:
    if isinstance(item, tuple):
        with zipfile.ZipFile(item[0]) as zf:
            return zf.read(item[1])
    return Path(item).read_bytes()


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders or ZIP archives.")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
    jobs: Annotated[int, typer.Option(help="Parallel readers.")] = 4,
    trial: Annotated[str, typer.Option(help="Trial code the studies belong to.")] = "",
    site: Annotated[str, typer.Option(help="Site code the studies belong to.")] = "",
) -> None:
    """Import DICOM files into the archive (same checks as network ingest)."""
    from ciams.archive import IngestResult
    from ciams.server import open_archive

    settings = _settings(config, data_dir, database_url)
    inputs = list(_iter_inputs(paths))
    counts: Counter[str] = Counter()
    problems: list[tuple[str, str]] = []

    def one(entry: tuple[str, Any]) -> tuple[str, IngestResult]:
        label, item = entry
        if item is None:
            return label, IngestResult(status="failed", reason="no such file")
        try:
            data = _read_input(item)
        except (OSError, zipfile.BadZipFile, KeyError) as exc:
            return label, IngestResult(status="failed", reason=f"cannot read: {exc}")
        source = {"interface": "import", "path": label[-200:], "trial": trial, "site": site}
        return label, archive.ingest(data, source)

    try:
        archive = open_archive(settings)
    except CiamsError as exc:
        raise _fail(exc) from exc
    with archive, _progress() as progress:
        task = progress.add_task("importing", total=len(inputs))
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            studies: set[str] = set()
            for label, result in pool.map(one, inputs):
                counts[result.status] += 1
                if result.ok:
                    studies.add(result.study_instance_uid)
                else:
                    problems.append((label, result.reason))
                progress.advance(task)
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        _audit(archive, "upload", tuple(sorted(studies)), f"import: {summary}")
    table = Table(title="import summary")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for status in ("stored", "duplicate", "versioned", "conflict", "rejected", "failed"):
        if counts[status]:
            table.add_row(status, str(counts[status]))
    console.print(table)
    if problems:
        ptable = Table(title="not stored (kept in quarantine where readable)")
        ptable.add_column("file", overflow="fold")
        ptable.add_column("reason", overflow="fold")
        for label, reason in problems[:200]:
            ptable.add_row(label, reason)
        console.print(ptable)
        if len(problems) > 200:
            console.print(f"... and {len(problems) - 200} more")
        raise typer.Exit(code=1)


@app.command("ls")
def ls(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
    patient_id: Annotated[str | None, typer.Option(help="Patient ID (wildcards * ?).")] = None,
    patient_name: Annotated[str | None, typer.Option(help="Patient name (wildcards).")] = None,
    date: Annotated[str | None, typer.Option(help="Study date or range YYYYMMDD-YYYYMMDD.")] = None,
    modality: Annotated[str | None, typer.Option(help="Modality in study, e.g. CT.")] = None,
    limit: Annotated[int, typer.Option(help="Most studies shown.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List studies, newest first."""
    from ciams.archive import Archive

    with Archive(_settings(config, data_dir, database_url)) as archive:
        try:
            studies = archive.list_studies(
                patient_id=patient_id,
                patient_name=patient_name,
                study_date=date,
                modality=modality,
                limit=limit,
            )
        except CiamsError as exc:
            raise _fail(exc) from exc
    if as_json:
        for s in studies:
            row = dict(vars(s), created_at=s.created_at.isoformat())
            sys.stdout.write(json.dumps(row) + "\n")
        return
    table = Table(title=f"{len(studies)} studies")
    for col in ("Study Instance UID", "Patient ID", "Name", "Date", "Modalities", "Description"):
        table.add_column(col, overflow="fold")
    table.add_column("Series", justify="right")
    table.add_column("Instances", justify="right")
    table.add_column("MB", justify="right")
    for s in studies:
        table.add_row(
            s.study_instance_uid,
            s.patient_id,
            s.patient_name,
            s.study_date,
            s.modalities,
            s.study_description,
            str(s.series),
            str(s.instances),
            f"{s.size / 1e6:.1f}",
        )
    console.print(table)


@app.command()
def export(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    dest: Annotated[Path, typer.Argument(help="Destination folder.")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Export a study's files (verified against their SHA-256) to a folder."""
    from ciams.archive import Archive

    with Archive(_settings(config, data_dir, database_url)) as archive, _progress() as progress:
        task = progress.add_task("exporting", total=None)
        try:
            files = archive.export(
                study_uid, dest, lambda n, total: progress.update(task, completed=n, total=total)
            )
        except CiamsError as exc:
            _audit(archive, "export", (study_uid,), f"to {dest}: {exc.message}", "failure")
            raise _fail(exc) from exc
        _audit(archive, "export", (study_uid,), f"{len(files)} instances to {dest}")
    console.print(f"exported {len(files)} instances to {dest}")


@app.command()
def fsck(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Re-hash every stored file against the index; exit 1 on missing, corrupt or orphan files."""
    from ciams.archive import Archive

    with Archive(_settings(config, data_dir, database_url)) as archive, _progress() as progress:
        task = progress.add_task("verifying", total=None)
        report = archive.fsck(lambda n, total: progress.update(task, completed=n, total=total))
    console.print(f"checked {report.checked} files")
    for label, keys in (
        ("missing", report.missing),
        ("corrupt", report.corrupt),
        ("orphan", report.orphans),
    ):
        console.print(f"  {label}: {len(keys)}")
        for key in keys[:50]:
            console.print(f"    {key}")
    if not report.ok:
        err_console.print("[red]the archive has problems[/red] (see above)")
        raise typer.Exit(code=1)
    console.print("[green]all stored files match the index[/green]")


@ae_app.command("add")
def ae_add(
    name: Annotated[str, typer.Argument(help="AE title.")],
    host: Annotated[str, typer.Argument(help="Host name or address.")],
    port: Annotated[int, typer.Argument(help="Port.")],
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    owner: Annotated[
        str, typer.Option(help="Account allowed to C-MOVE to it (default: administrators).")
    ] = "",
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Register a remote AE (a C-MOVE destination)."""
    from ciams.archive import Archive
    from ciams.net import AERegistry

    with Archive(_settings(config, data_dir, database_url)) as archive:
        try:
            AERegistry(archive.sessions).add(name, host, port, description=description, owner=owner)
        except CiamsError as exc:
            raise _fail(exc) from exc
        _audit(archive, "change", (), f"ae add {name} {host}:{port} owner={owner or '-'}")
    console.print(f"registered {name} at {host}:{port}")


@ae_app.command("list")
def ae_list(
    data_dir: DataDir = None, config: ConfigFile = None, database_url: DatabaseUrl = None
) -> None:
    """List registered remote AEs."""
    from ciams.archive import Archive
    from ciams.net import AERegistry

    with Archive(_settings(config, data_dir, database_url)) as archive:
        entries = AERegistry(archive.sessions).list()
    table = Table(title="remote AEs")
    for col in ("AE title", "host", "port", "owner", "description"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.ae_title, e.host, str(e.port), e.owner or "(admins)", e.description)
    console.print(table)


@ae_app.command("remove")
def ae_remove(
    name: Annotated[str, typer.Argument(help="AE title.")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Forget a remote AE."""
    from ciams.archive import Archive
    from ciams.net import AERegistry

    with Archive(_settings(config, data_dir, database_url)) as archive:
        removed = AERegistry(archive.sessions).remove(name)
        if removed:
            _audit(archive, "change", (), f"ae remove {name}")
    if not removed:
        err_console.print(f"[red]error:[/red] no remote AE named {name}")
        raise typer.Exit(code=1)
    console.print(f"removed {name}")


@config_app.command("dump-default")
def config_dump_default() -> None:
    """Print a commented default configuration file (TOML)."""
    sys.stdout.write(dump_default() + "\n")


@config_app.command("show")
def config_show(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Print the effective settings (file + environment)."""
    console.print_json(_settings(config, data_dir).model_dump_json())


@quarantine_app.command("ls")
def quarantine_ls(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """List quarantined inputs with their reasons."""
    from ciams.archive import Quarantine

    settings = _settings(config, data_dir)
    table = Table(title="quarantine")
    for col in ("id", "code", "reason", "source", "bytes"):
        table.add_column(col, overflow="fold")
    for e in Quarantine(settings.quarantine_dir).entries():
        src = " ".join(f"{k}={v}" for k, v in e.source.items())
        table.add_row(e.id, e.code, e.reason, src, str(e.size))
    console.print(table)


app.command("deid")(deid_command)


def main() -> None:  # pragma: no cover - console script shim
    app()
