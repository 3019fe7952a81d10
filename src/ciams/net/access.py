"""Who a DICOM peer is, what it may do, and the audit record of what it did.

A calling AE title acts as the user it is bound to (``ciams user bind-ae``), and, when
a TLS client certificate was registered with the binding, only with that certificate.
An unbound AE is refused, except that the listener bound to a loopback address lets
local tools act as administrator (``access.anonymous_dicom_on_loopback``): the quick
start's dcmtk commands work, and nothing from another machine gets in unbound.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
from collections import defaultdict
from typing import Any
from weakref import WeakKeyDictionary

from ciams.access import Accounts, AuditTrail, Event, Principal, authorize
from ciams.archive import Archive
from ciams.config import Settings
from ciams.errors import AuthenticationError

log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def peer_certificate_sha256(assoc: Any) -> str:
    """SHA-256 of the peer's TLS certificate, '' without TLS or certificate."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return ""
    try:
        der = getpeercert(binary_form=True)
    except (OSError, ValueError):
        return ""
    return hashlib.sha256(der).hexdigest() if der else ""


class DimseAccess:
    """Per-association principals, the policy check, and audit events."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        self.accounts = Accounts(archive.sessions)
        self.audit = AuditTrail(archive.sessions)
        self.anonymous_local = settings.access.anonymous_dicom_on_loopback and _is_loopback(
            settings.dicom.host
        )
        self._principals: WeakKeyDictionary[Any, Principal] = WeakKeyDictionary()
        self._stored: WeakKeyDictionary[Any, dict[str, int]] = WeakKeyDictionary()
        self._lock = threading.Lock()

    def principal(self, assoc: Any) -> Principal:
        """The principal an association acts as (looked up once per association)."""
        with self._lock:
            cached = self._principals.get(assoc)
        if cached is not None:
            return cached
        calling = str(assoc.requestor.ae_title).strip()
        found = self.accounts.principal_for_ae(calling, peer_certificate_sha256(assoc))
        if found is None:
            if not self.anonymous_local:
                raise AuthenticationError(
                    f"calling AE {calling} is not bound to an account",
                    hint="an administrator binds it with: ciams user bind-ae AE USER",
                )
            found = Principal(username=f"local:{calling}", role="admin")
        with self._lock:
            self._principals[assoc] = found
        return found

    def require(self, event: Any, action: str) -> Principal:
        """Authenticate the association and allow ``action`` (else raise)."""
        try:
            principal = self.principal(event.assoc)
            authorize(principal, action)
        except Exception as exc:
            self.record(event, action, "denied", detail=str(exc))
            raise
        return principal

    def record(
        self,
        event: Any,
        action: str,
        outcome: str,
        objects: tuple[str, ...] = (),
        detail: str = "",
        principal: Principal | None = None,
    ) -> None:
        """Write one audit event for a DIMSE operation."""
        assoc = event.assoc if hasattr(event, "assoc") else event
        if principal is None:
            with self._lock:
                principal = self._principals.get(assoc)
        calling = str(assoc.requestor.ae_title).strip()
        try:
            self.audit.record(
                Event(
                    action=action,
                    outcome=outcome,
                    username=principal.username if principal else f"ae:{calling}",
                    role=principal.role if principal else "",
                    client=str(assoc.requestor.address),
                    interface="dimse",
                    objects=objects[:100],
                    detail=f"calling AE {calling}: {detail}" if detail else f"calling AE {calling}",
                )
            )
        except Exception:
            log.exception("could not write the audit event")

    # C-STORE writes one event per association (at release), not one per instance,
    # as DICOM audit messages do for "DICOM Instances Transferred".
    def stored(self, assoc: Any, study_uid: str) -> None:
        with self._lock:
            self._stored.setdefault(assoc, defaultdict(int))[study_uid] += 1

    def association_ended(self, event: Any) -> None:
        with self._lock:
            studies = self._stored.pop(event.assoc, None)
        if studies:
            total = sum(studies.values())
            self.record(
                event, "upload", "success", tuple(sorted(studies)), f"{total} instances stored"
            )
