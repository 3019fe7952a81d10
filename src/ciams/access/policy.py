"""The one policy layer: who may do what, and which studies they see.

Every interface (REST, DICOMweb, DIMSE, CLI) asks :func:`authorize` for the action and
passes :func:`scope_of` to the archive, so a site user's query returns only the own
site's studies and a retrieval of another site's object finds nothing (the same answer
as for a missing one: no existence leak).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ciams.archive import EVERYTHING, Scope
from ciams.errors import AccessDeniedError

Action = Literal[
    "query",  # QIDO-RS, C-FIND, listings
    "view",  # metadata, rendered images, frames
    "download",  # WADO-RS instances, C-MOVE, C-GET, export
    "upload",  # STOW-RS, C-STORE, import
    "manage",  # users, AEs, settings
    "audit",  # read and export the audit trail
]

# Role -> allowed actions. Researchers get data only through approved data requests
# (a later feature), so they have no archive rights of their own yet.
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"query", "view", "download", "upload", "manage", "audit"}),
    "monitor": frozenset({"query", "view", "download"}),
    "site": frozenset({"query", "view", "download", "upload"}),
    "reader": frozenset({"query", "view"}),
    "researcher": frozenset(),
    "auditor": frozenset({"audit"}),
}
ROLES = frozenset(PERMISSIONS)
# Actions every authenticated user may take (about themselves).
ANY_ROLE = frozenset({"whoami"})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    username: str
    role: str
    grants: tuple[tuple[str, str], ...] = ()

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can(self, action: str) -> bool:
        return action in ANY_ROLE or action in PERMISSIONS.get(self.role, frozenset())

    def upload_target(self) -> tuple[str, str]:
        """(trial, site) that this caller's uploads belong to."""
        if self.is_admin or not self.grants:
            return ("", "")
        return self.grants[0]


# The archive acting for itself (tasks, the CLI on the server machine).
SYSTEM = Principal(username="system", role="admin")


def authorize(principal: Principal, action: str) -> None:
    """Raise :class:`AccessDeniedError` unless the role allows the action."""
    if not principal.can(action):
        raise AccessDeniedError(f"{principal.role} users may not {action}")


def scope_of(principal: Principal) -> Scope:
    """The studies a principal may see."""
    if principal.is_admin:
        return EVERYTHING
    return Scope(tuple(principal.grants))


def upload_source(principal: Principal) -> dict[str, str]:
    """Ingest ``source`` keys that place a principal's upload in its trial and site."""
    trial, site = principal.upload_target()
    source = {"user": principal.username, "trial": trial, "site": site}
    if not principal.is_admin:
        source["scoped"] = "1"
    return source
