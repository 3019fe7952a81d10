"""``ciams user ...`` and ``ciams audit ...`` sub-commands."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ciams.access.accounts import Accounts
from ciams.access.audit import AuditTrail, Event, write_csv, write_json
from ciams.config import load_settings
from ciams.errors import CiamsError

user_app = typer.Typer(help="Accounts, roles and API tokens.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", "-d", help="Data folder.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="TOML configuration.")]
DatabaseUrl = Annotated[str | None, typer.Option("--database-url", help="SQLAlchemy URL.")]


@contextmanager
def _services(
    config: Path | None, data_dir: Path | None, database_url: str | None
) -> Iterator[tuple[Accounts, AuditTrail]]:
    from ciams.archive import Archive

    try:
        settings = load_settings(config, data_dir=data_dir, database_url=database_url)
        with Archive(settings) as archive:
            yield Accounts(archive.sessions), AuditTrail(archive.sessions)
    except CiamsError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        if exc.hint:
            err_console.print(f"[dim]{exc.hint}[/dim]")
        raise typer.Exit(code=2) from exc


def _audit_change(trail: AuditTrail, detail: str, objects: tuple[str, ...] = ()) -> None:
    trail.record(
        Event(
            action="manage",
            username="cli",
            role="admin",
            interface="cli",
            objects=objects,
            detail=detail,
        )
    )


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[str, typer.Option(help="admin, monitor, site, reader, researcher, auditor")],
    trial: Annotated[str, typer.Option(help="Trial code of the membership.")] = "",
    site: Annotated[str, typer.Option(help="Site code (site users).")] = "",
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a user and print a one-time password (never shown again)."""
    with _services(config, data_dir, database_url) as (accounts, trail):
        password = accounts.add_user(name, role, trial=trial, site=site)
        _audit_change(trail, f"user add {name} role={role} trial={trial} site={site}")
    console.print(f"created {name} ({role}); one-time password, shown once:")
    sys.stdout.write(password + "\n")


@user_app.command("list")
def user_list(
    data_dir: DataDir = None, config: ConfigFile = None, database_url: DatabaseUrl = None
) -> None:
    """List users with their roles and memberships."""
    with _services(config, data_dir, database_url) as (accounts, _):
        users = accounts.list_users()
    table = Table(title="users")
    for col in ("user", "role", "trial/site", "state"):
        table.add_column(col)
    for u in users:
        scope = ", ".join(f"{t or '*'}/{s or '*'}" for t, s in u.memberships) or "-"
        state = "disabled" if u.disabled else ("locked" if u.locked else "active")
        table.add_row(u.username, u.role, scope, state)
    console.print(table)


def _set_disabled(
    name: str, disabled: bool, config: Path | None, data_dir: Path | None, database_url: str | None
) -> None:
    verb = "disable" if disabled else "enable"
    with _services(config, data_dir, database_url) as (accounts, trail):
        accounts.set_disabled(name, disabled)
        _audit_change(trail, f"user {verb} {name}")
    console.print(f"{verb}d {name}")


@user_app.command("disable")
def user_disable(
    name: str,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Disable a user and revoke their tokens."""
    _set_disabled(name, True, config, data_dir, database_url)


@user_app.command("enable")
def user_enable(
    name: str,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Enable a disabled user."""
    _set_disabled(name, False, config, data_dir, database_url)


@user_app.command("passwd")
def user_passwd(
    name: str,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Reset a password (prints a new one-time password) and unlock the account."""
    with _services(config, data_dir, database_url) as (accounts, trail):
        password = accounts.set_password(name)
        _audit_change(trail, f"user passwd {name}")
    console.print(f"new one-time password for {name}, shown once:")
    sys.stdout.write(password + "\n")


@user_app.command("token")
def user_token(
    name: str,
    expires: Annotated[float, typer.Option(help="Days until it expires (0 = never).")] = 90,
    revoke: Annotated[bool, typer.Option(help="Revoke all tokens of the user instead.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print a new API token once (send it as `Authorization: Bearer TOKEN`)."""
    with _services(config, data_dir, database_url) as (accounts, trail):
        if revoke:
            n = accounts.revoke_tokens(name)
            _audit_change(trail, f"user token revoke {name} ({n})")
            console.print(f"revoked {n} tokens of {name}")
            return
        token = accounts.issue_token(name, expires_days=expires or None)
        _audit_change(trail, f"user token {name} expires={expires or 'never'}")
    sys.stdout.write(token + "\n")


@user_app.command("bind-ae")
def user_bind_ae(
    ae_title: str,
    name: str,
    cert_sha256: Annotated[str, typer.Option(help="Required TLS client certificate hash.")] = "",
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Let a calling AE title act as a user on DICOM (its site's scope)."""
    with _services(config, data_dir, database_url) as (accounts, trail):
        accounts.bind_ae(ae_title, name, cert_sha256=cert_sha256)
        _audit_change(trail, f"bind AE {ae_title} to {name}")
    console.print(f"calling AE {ae_title} acts as {name}")


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDir = None, config: ConfigFile = None, database_url: DatabaseUrl = None
) -> None:
    """Check the hash chain; exit 1 when any event was edited, inserted or deleted."""
    with _services(config, data_dir, database_url) as (_, trail):
        report = trail.verify()
    console.print(f"checked {report.checked} events")
    for problem in report.problems:
        err_console.print(f"[red]{problem}[/red]")
    if not report.ok:
        raise typer.Exit(code=1)
    console.print("[green]the audit trail is intact[/green]")


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Argument(help="Output file (.csv or .json).")],
    user: Annotated[str | None, typer.Option(help="Only this user.")] = None,
    obj: Annotated[
        str | None, typer.Option("--object", help="Only events naming this UID.")
    ] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Until this time (UTC).")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Export events as CSV or as DICOM audit messages (IHE ATNA style JSON)."""
    with _services(config, data_dir, database_url) as (_, trail):
        events = trail.events(username=user, obj=obj, since=since, until=until)
        trail.record(
            Event(
                action="audit",
                username="cli",
                role="admin",
                interface="cli",
                detail=f"export {len(events)} events",
            )
        )
    if out.suffix.lower() == ".json":
        n = write_json(events, out)
    else:
        with out.open("w", newline="", encoding="utf-8") as fh:
            n = write_csv(events, fh)
    console.print(f"wrote {n} events to {out}")
