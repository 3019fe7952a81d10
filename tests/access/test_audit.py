"""Audit trail: chaining, tamper detection, filters and export."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, event, insert, select, update

from ciams.access import AuditTrail, Event, write_csv, write_json
from ciams.access.audit import iter_csv_rows
from ciams.access.models import AuditEvent
from ciams.archive import Archive


@pytest.fixture
def trail(archive: Archive) -> AuditTrail:
    t = AuditTrail(archive.sessions)
    for n in range(6):
        t.record(
            Event(
                action="query" if n % 2 else "view",
                username=f"user{n % 3}",
                role="site",
                client="127.0.0.1",
                interface="dicomweb",
                objects=(f"1.2.3.{n}",),
            )
        )
    return t


def test_clean_chain_verifies(trail: AuditTrail) -> None:
    report = trail.verify()
    assert report.ok and report.checked == 6


def test_edit_is_detected(trail: AuditTrail) -> None:
    with trail.sessions() as s, s.begin():
        s.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(username="mallory"))
    report = trail.verify()
    assert not report.ok
    assert any("event 3: content changed" in p for p in report.problems)


def test_deletion_in_the_middle_is_detected(trail: AuditTrail) -> None:
    with trail.sessions() as s, s.begin():
        s.execute(delete(AuditEvent).where(AuditEvent.seq == 2))
    problems = trail.verify().problems
    assert any("missing" in p for p in problems) and any("chain broken" in p for p in problems)


def test_deleting_the_newest_is_detected(trail: AuditTrail) -> None:
    with trail.sessions() as s, s.begin():
        s.execute(delete(AuditEvent).where(AuditEvent.seq >= 5))
    assert any("newest events missing" in p for p in trail.verify().problems)


def test_deleting_every_event_is_detected(trail: AuditTrail) -> None:
    with trail.sessions() as s, s.begin():
        s.execute(delete(AuditEvent))
    report = trail.verify()
    assert report.checked == 0
    assert report.problems == ["newest events missing: the head says 6, the trail ends at 0"]


def test_an_empty_trail_verifies(archive: Archive) -> None:
    report = AuditTrail(archive.sessions).verify()
    assert report.ok and report.checked == 0


def test_events_appended_while_verifying_are_no_tampering(
    archive: Archive, trail: AuditTrail
) -> None:
    """A live server keeps auditing during a verify: an event committed after the
    walk began must not read as deleted (the head and the events are one snapshot)."""
    other = AuditTrail(archive.sessions)
    appended: list[int] = []

    def append_once(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if appended or "audit_events" not in statement or "INSERT" in statement:
            return
        appended.append(-1)  # disarm first: record() runs statements too
        appended[0] = other.record(Event(action="view", username="during-verify"))

    event.listen(archive.engine, "before_cursor_execute", append_once)
    try:
        report = trail.verify()
    finally:
        event.remove(archive.engine, "before_cursor_execute", append_once)
    assert appended == [7]
    assert report.ok, report.problems
    assert trail.verify().checked == 7


def test_insertion_is_detected(trail: AuditTrail) -> None:
    with trail.sessions() as s, s.begin():
        row = s.scalar(select(AuditEvent).where(AuditEvent.seq == 6))
        assert row is not None
        s.execute(update(AuditEvent).where(AuditEvent.seq == 6).values(seq=7))
        s.execute(
            insert(AuditEvent).values(
                seq=6,
                at=row.at,
                username="forger",
                role="admin",
                client="",
                interface="",
                action="view",
                objects="",
                outcome="success",
                detail="",
                prev_hash=row.prev_hash,
                hash="f" * 64,
            )
        )
    assert not trail.verify().ok


def test_filters_and_exports(trail: AuditTrail, tmp_path: Path) -> None:
    assert [e.seq for e in trail.events(username="user1")] == [2, 5]
    assert [e.seq for e in trail.events(obj="1.2.3.4")] == [5]
    assert [e.seq for e in trail.events(action="view", limit=2)] == [1, 3]
    buf = StringIO()
    assert write_csv(trail.events(), buf) == 6
    rows = list(iter_csv_rows(buf.getvalue()))
    assert rows[0]["username"] == "user0" and len(rows[0]["hash"]) == 64
    path = tmp_path / "audit.json"
    assert write_json(trail.events(), path) == 6
    messages = json.loads(path.read_text())
    first = messages[0]
    assert first["EventIdentification"]["EventID"]["csd-code"] == "110103"
    assert first["ActiveParticipant"][0]["UserID"] == "user0"
    assert first["ParticipantObjectIdentification"][0]["ParticipantObjectID"] == "1.2.3.0"
