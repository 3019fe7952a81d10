"""Registry of remote application entities: where C-MOVE sends to, by AE title.

An AE title is at most 16 characters of the default character repertoire without
backslash or control characters; leading and trailing spaces are not significant
(PS3.5 6.2, VR AE).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ciams.errors import InvalidRequestError, NetError
from ciams.net.models import RemoteAE


class AEExistsError(NetError):
    """An AE with this title is already registered."""

    code = "ae-exists"
    http_status = 409
    default_hint = "remove it first with: ciams ae remove NAME"


@dataclass(frozen=True)
class RemoteAEInfo:
    """One registered remote AE."""

    ae_title: str
    host: str
    port: int
    description: str
    created_at: datetime
    owner: str = ""


def validate_ae_title(value: str) -> str:
    """The AE title without insignificant spaces; raises InvalidRequestError if invalid."""
    if not isinstance(value, str):
        raise InvalidRequestError("AE title must be text")
    title = value.strip(" ")
    if not title:
        raise InvalidRequestError("AE title is empty", hint="use 1 to 16 characters")
    if len(title) > 16:
        raise InvalidRequestError(
            f"AE title {title[:32]!r} is longer than 16 characters",
            hint="use 1 to 16 characters",
        )
    if any(c == "\\" or not (" " <= c <= "~") for c in title):
        raise InvalidRequestError(
            f"AE title {title!r} contains a backslash, control or non-ASCII character",
            hint="use letters, digits, spaces and ASCII punctuation other than backslash",
        )
    return title


def _validate_host(host: str) -> str:
    host = host.strip() if isinstance(host, str) else ""
    if not host or len(host) > 255 or any(c.isspace() for c in host):
        raise InvalidRequestError(f"invalid host {host!r}", hint="give a host name or IP address")
    return host


def _validate_port(port: int) -> int:
    try:
        number = int(port)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"invalid port {port!r}", hint="use 1 to 65535") from exc
    if isinstance(port, bool) or not 1 <= number <= 65535:
        raise InvalidRequestError(f"invalid port {port!r}", hint="use 1 to 65535")
    return number


def _info(row: RemoteAE) -> RemoteAEInfo:
    created = row.created_at
    if created is not None and created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return RemoteAEInfo(
        ae_title=row.ae_title,
        host=row.host,
        port=row.port,
        description=row.description or "",
        created_at=created,
        owner=row.owner or "",
    )


class AERegistry:
    """Add, remove and look up remote AEs in the index database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def add(
        self,
        ae_title: str,
        host: str,
        port: int,
        description: str = "",
        *,
        replace: bool = False,
        owner: str = "",
    ) -> RemoteAEInfo:
        """Register a remote AE; with ``replace`` an existing entry is updated. ``owner``
        is the account allowed to C-MOVE to it ('' = administrators only)."""
        title = validate_ae_title(ae_title)
        host = _validate_host(host)
        number = _validate_port(port)
        description = (description or "").strip()
        if len(description) > 255:
            raise InvalidRequestError("description is longer than 255 characters")
        try:
            with self._sessions() as session, session.begin():
                row = session.scalar(select(RemoteAE).where(RemoteAE.ae_title == title))
                if row is not None and not replace:
                    raise AEExistsError(f"AE {title!r} is already registered")
                if row is None:
                    row = RemoteAE(ae_title=title, created_at=datetime.now(UTC))
                    session.add(row)
                row.host, row.port, row.description = host, number, description
                row.owner = owner.strip()[:64]
            return _info(row)
        except IntegrityError as exc:
            # Two writers registering the same title at once: the unique index decides.
            raise AEExistsError(f"AE {title!r} is already registered") from exc

    def remove(self, ae_title: str) -> bool:
        """Forget a remote AE; False when it was not registered."""
        title = validate_ae_title(ae_title)
        with self._sessions() as session, session.begin():
            row = session.scalar(select(RemoteAE).where(RemoteAE.ae_title == title))
            if row is None:
                return False
            session.delete(row)
            return True

    def get(self, ae_title: str) -> RemoteAEInfo | None:
        """The registered AE with this title, or None (also for an invalid title)."""
        try:
            title = validate_ae_title(ae_title)
        except InvalidRequestError:
            return None
        with self._sessions() as session:
            row = session.scalar(select(RemoteAE).where(RemoteAE.ae_title == title))
            return _info(row) if row is not None else None

    def list(self) -> list[RemoteAEInfo]:
        """Every registered AE, by title."""
        with self._sessions() as session:
            rows = session.scalars(select(RemoteAE).order_by(RemoteAE.ae_title)).all()
            return [_info(r) for r in rows]
