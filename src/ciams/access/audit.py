"""The audit trail: append-only, hash-chained events; verification and export.

Each event's hash is SHA-256 over its canonical fields and the previous event's hash;
a one-row head keeps the newest sequence number and hash. :meth:`AuditTrail.verify`
therefore detects an edited event (hash mismatch), an inserted or deleted one (broken
chain or sequence gap) and deleted newest events (head mismatch). Export writes CSV and
JSON shaped like DICOM audit messages (PS3.15 A.5, the IHE ATNA schema).
"""

from __future__ import annotations

import csv
import hashlib
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, cast

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ciams.access.models import AuditEvent, AuditHead

GENESIS = "0" * 64
FIELDS = (
    "seq",
    "at",
    "username",
    "role",
    "client",
    "interface",
    "action",
    "objects",
    "outcome",
    "detail",
)

# action -> (DCM event code, display name, EventActionCode) per PS3.16 CID 400/401.
EVENT_CODES: dict[str, tuple[str, str, str]] = {
    "login": ("110114", "User Authentication", "E"),
    "query": ("110112", "Query", "E"),
    "view": ("110103", "DICOM Instances Accessed", "R"),
    "download": ("110104", "DICOM Instances Transferred", "R"),
    "upload": ("110104", "DICOM Instances Transferred", "C"),
    "export": ("110106", "Export", "R"),
    "change": ("110136", "Security Alert", "U"),
    "manage": ("110136", "Security Alert", "U"),
    "audit": ("110101", "Audit Log Used", "R"),
}
OUTCOME_CODES = {"success": "0", "denied": "4", "failure": "8"}


@dataclass(frozen=True)
class Event:
    """What happened, before it is chained."""

    action: str
    outcome: str = "success"
    username: str = ""
    role: str = ""
    client: str = ""
    interface: str = ""
    objects: tuple[str, ...] = ()
    detail: str = ""


@dataclass
class VerifyReport:
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _utc_text(value: datetime) -> str:
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _canonical(row: AuditEvent | dict[str, Any]) -> dict[str, Any]:
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    out = {k: get(k) for k in FIELDS}
    out["at"] = _utc_text(cast(datetime, out["at"]))
    return out


def chain_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    """SHA-256 of the previous hash and the canonical JSON of an event's fields."""
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


class AuditTrail:
    """Writes, verifies, filters and exports audit events."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._lock = threading.Lock()

    def record(self, event: Event) -> int:
        """Append one event; returns its sequence number.

        Other processes append too (DICOM workers): when one took the next sequence
        number first, the unique key refuses ours and we chain again from the new head.
        """
        for attempt in range(10):
            try:
                return self._append(event)
            except (IntegrityError, OperationalError):
                if attempt == 9:
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def _append(self, event: Event) -> int:
        with self._lock, self.sessions() as session, session.begin():
            head = session.scalar(select(AuditHead).where(AuditHead.id == 1).with_for_update())
            if head is None:
                head = AuditHead(id=1, seq=0, hash=GENESIS)
                session.add(head)
                session.flush()
            seq = head.seq + 1
            fields: dict[str, Any] = {
                "seq": seq,
                "at": datetime.now(UTC),
                "username": event.username[:64],
                "role": event.role[:16],
                "client": event.client[:64],
                "interface": event.interface[:16],
                "action": event.action[:32],
                "objects": "\\".join(event.objects),
                "outcome": event.outcome[:16],
                "detail": event.detail,
            }
            digest = chain_hash(head.hash, _canonical(fields))
            session.add(AuditEvent(**fields, prev_hash=head.hash, hash=digest))
            head.seq = seq
            head.hash = digest
            return seq

    def verify(self) -> VerifyReport:
        """Walk the chain and report every edited, inserted or deleted event.

        The head and the events are read in one statement, so they come from one
        snapshot: an event appended while we read (the server keeps auditing) is in
        both or in neither, never a false "newest events missing".
        """
        report = VerifyReport()
        expected_prev, expected_seq = GENESIS, 1
        head_seq = select(AuditHead.seq).where(AuditHead.id == 1).scalar_subquery()
        head_hash = select(AuditHead.hash).where(AuditHead.id == 1).scalar_subquery()
        head: tuple[int | None, str | None] = (None, None)
        with self.sessions() as session:
            rows = session.execute(select(AuditEvent, head_seq, head_hash).order_by(AuditEvent.seq))
            for row, *head_now in rows:
                head = (head_now[0], head_now[1])
                report.checked += 1
                if row.seq != expected_seq:
                    report.problems.append(
                        f"event {expected_seq}..{row.seq - 1} missing (deleted)"
                        if row.seq > expected_seq
                        else f"event {row.seq} out of order (inserted)"
                    )
                if row.prev_hash != expected_prev:
                    report.problems.append(f"event {row.seq}: chain broken (inserted or deleted)")
                if chain_hash(row.prev_hash, _canonical(row)) != row.hash:
                    report.problems.append(f"event {row.seq}: content changed (edited)")
                expected_prev, expected_seq = row.hash, row.seq + 1
            if not report.checked:
                # No event rows brought the head along: read it with a count of events
                # in one statement, and walk again when the first events came meanwhile.
                count = select(func.count()).select_from(AuditEvent).scalar_subquery()
                seq, digest, arrived = session.execute(select(head_seq, head_hash, count)).one()
                if arrived:
                    return self.verify()
                head = (seq, digest)
        head_seq_value = head[0] or 0
        head_hash_value = head[1] or GENESIS
        if head_seq_value != expected_seq - 1 or head_hash_value != expected_prev:
            report.problems.append(
                f"newest events missing: the head says {head_seq_value}, "
                f"the trail ends at {expected_seq - 1}"
            )
        return report

    def events(
        self,
        *,
        username: str | None = None,
        obj: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        action: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """Events filtered by user, object UID, time range and action, oldest first."""
        stmt = select(AuditEvent).order_by(AuditEvent.seq)
        if username:
            stmt = stmt.where(AuditEvent.username == username)
        if obj:
            stmt = stmt.where(AuditEvent.objects.contains(obj, autoescape=True))
        if since:
            stmt = stmt.where(AuditEvent.at >= since)
        if until:
            stmt = stmt.where(AuditEvent.at <= until)
        if action:
            stmt = stmt.where(AuditEvent.action == action)
        if limit:
            stmt = stmt.limit(limit)
        with self.sessions() as session:
            return list(session.scalars(stmt).all())


def write_csv(events: Iterable[AuditEvent], out: TextIO) -> int:
    """Write events as CSV; returns the count."""
    writer = csv.writer(out)
    writer.writerow([*FIELDS, "prev_hash", "hash"])
    n = 0
    for e in events:
        c = _canonical(e)
        writer.writerow([*(c[k] for k in FIELDS), e.prev_hash, e.hash])
        n += 1
    return n


def atna_message(event: AuditEvent) -> dict[str, Any]:
    """One event as a DICOM audit message (PS3.15 A.5.1) in JSON form."""
    code, name, action_code = EVENT_CODES.get(event.action, ("110100", "Application Activity", "E"))
    objects = [o for o in event.objects.split("\\") if o]
    return {
        "EventIdentification": {
            "EventID": {"csd-code": code, "codeSystemName": "DCM", "originalText": name},
            "EventActionCode": action_code,
            "EventDateTime": _utc_text(event.at),
            "EventOutcomeIndicator": OUTCOME_CODES.get(event.outcome, "8"),
            "EventOutcomeDescription": event.detail,
        },
        "ActiveParticipant": [
            {
                "UserID": event.username,
                "UserIsRequestor": True,
                "RoleIDCode": {"csd-code": event.role, "codeSystemName": "CIAMS-role"},
                "NetworkAccessPointID": event.client,
                "NetworkAccessPointTypeCode": "2",
            },
            {"UserID": "CIAMS", "UserIsRequestor": False, "UserTypeCode": event.interface},
        ],
        "AuditSourceIdentification": {"AuditSourceID": "CIAMS"},
        "ParticipantObjectIdentification": [
            {
                "ParticipantObjectID": uid,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
                "ParticipantObjectIDTypeCode": {
                    "csd-code": "110180",
                    "codeSystemName": "DCM",
                    "originalText": "Study Instance UID",
                },
            }
            for uid in objects
        ],
        "ciams": {"seq": event.seq, "prev_hash": event.prev_hash, "hash": event.hash},
    }


def write_json(events: Iterable[AuditEvent], path: Path) -> int:
    """Write events as a JSON array of DICOM audit messages; returns the count."""
    messages = [atna_message(e) for e in events]
    path.write_text(json.dumps(messages, indent=1), encoding="utf-8")
    return len(messages)


def iter_csv_rows(text: str) -> Iterator[dict[str, str]]:
    """Read back an exported CSV (for tests and tooling)."""
    yield from csv.DictReader(text.splitlines())
