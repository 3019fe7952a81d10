"""The archive: one ingest path for every way an instance arrives, and the reads on top."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ciams import db
from ciams.archive.index import IndexOutcome, IndexRequest, IndexWriter
from ciams.archive.models import Instance, InstanceVersion, Patient, Series, Study
from ciams.archive.parse import InstanceIds, ParsedInstance, identify, parse_instance
from ciams.archive.quarantine import Quarantine
from ciams.archive.query import EVERYTHING, FindQuery, Scope, find
from ciams.archive.storage import (
    LocalStorage,
    Staged,
    StorageArea,
    content_key,
    process_alive,
    same_filesystem,
)
from ciams.config import Settings
from ciams.errors import (
    AccessDeniedError,
    CiamsError,
    ConflictError,
    InvalidInstanceError,
    NotFoundError,
    StorageError,
    StudyMismatchError,
)

log = logging.getLogger(__name__)

Status = Literal["stored", "duplicate", "versioned", "conflict", "rejected", "failed"]
Guard = Callable[[ParsedInstance, dict[str, str]], None]
CommitListener = Callable[[list[tuple[IndexRequest, IndexOutcome]]], None]

# pydicom is lenient on receive: a value that breaks its VR rules is kept as received.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


# Index outcomes that mean the instance is in the archive, as result statuses.
_ACCEPTED: dict[str, Status] = {
    "stored": "stored",
    "duplicate": "duplicate",
    "versioned": "versioned",
}


def _ids(parsed: ParsedInstance) -> InstanceIds:
    """The identifying UIDs of a parsed instance."""
    return InstanceIds(
        sop_instance_uid=parsed.sop_instance_uid,
        sop_class_uid=parsed.sop_class_uid,
        study_instance_uid=parsed.study_instance_uid,
        series_instance_uid=parsed.series_instance_uid,
        transfer_syntax_uid=parsed.transfer_syntax_uid,
    )


def _discard(pending: Future[Staged]) -> None:
    """Drop bytes staged for an instance that is not stored (after their write ends)."""
    with contextlib.suppress(CiamsError):
        pending.result().discard()


@dataclass(frozen=True)
class IngestResult:
    """What happened to one received instance; each interface maps it to its own status."""

    status: Status
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    transfer_syntax_uid: str = ""
    reason: str = ""
    error: CiamsError | None = None
    quarantine_id: str = ""

    @property
    def ok(self) -> bool:
        """Stored, or already stored with the same bytes."""
        return self.status in ("stored", "duplicate", "versioned")


@dataclass(frozen=True)
class InstanceRef:
    """Where one stored instance is and what it is."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size: int
    sha256: str
    number_of_frames: int
    instance_number: int | None


@dataclass
class FsckReport:
    """Outcome of :meth:`Archive.fsck`."""

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.orphans)


@dataclass(frozen=True)
class StudySummary:
    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    study_description: str
    accession_number: str
    modalities: str
    series: int
    instances: int
    size: int
    created_at: datetime


class Archive:
    """Storage area + index + quarantine, behind one object."""

    def __init__(self, settings: Settings, *, storage: StorageArea | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage: StorageArea = storage or LocalStorage(settings.storage_dir)
        db_file = db.sqlite_path(settings.db_url)
        # With the SQLite file on the storage's filesystem, one syncfs after the commit
        # makes files and index durable together; otherwise files are flushed first and
        # the database makes its own commit durable.
        self._sync_after_commit = (
            isinstance(self.storage, LocalStorage)
            and db_file is not None
            and same_filesystem(settings.data_dir, self.storage.root)
        )
        self.engine = db.make_engine(
            settings.db_url, sqlite_synchronous="NORMAL" if self._sync_after_commit else "FULL"
        )
        db.upgrade(self.engine)
        self.sessions = db.session_factory(self.engine)
        # The index writer's own engine: immediate transactions, so that several
        # processes writing one SQLite index wait for each other instead of failing.
        self._write_engine = db.make_engine(
            settings.db_url,
            sqlite_synchronous="NORMAL" if self._sync_after_commit else "FULL",
            sqlite_immediate=True,
        )
        self.quarantine = Quarantine(settings.quarantine_dir)
        self._run_marker = self._recover()
        self._guards: list[Guard] = []
        self._listeners: list[CommitListener] = []
        self._listener_lock = threading.Lock()
        self._stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ciams-stage")
        self._ingest_lock = threading.Lock()
        self._ingesting = 0
        self._writer = IndexWriter(
            self._write_engine,
            on_conflict=settings.archive.on_conflict,
            batch_max=settings.archive.index_batch_max,
            on_commit=self._notify,
            sync=self.storage.sync,
            sync_after_commit=self._sync_after_commit,
        )

    def close(self) -> None:
        """Stop the index writer and release the database."""
        self._writer.close()
        self._stager.shutdown(wait=True)
        self._write_engine.dispose()
        self.engine.dispose()
        self._run_marker.unlink(missing_ok=True)

    def _recover(self) -> Path:
        """After an unclean stop, drop index rows whose file never became durable.

        Every acknowledged instance had its file flushed, so a row whose file is missing
        after a crash belongs to an instance that was never acknowledged: the sender
        will send it again. Each process leaves ``run/<pid>-<nonce>.json`` while it
        runs; one left by a dead process marks the unclean stop and the time to check from.
        """
        run_dir = self.settings.data_dir / "run"
        run_dir.mkdir(exist_ok=True)
        since: datetime | None = None
        for marker in run_dir.glob("*.json"):
            try:
                if process_alive(int(marker.stem.split("-", 1)[0])):
                    continue
            except ValueError:
                pass
            try:
                started = datetime.fromisoformat(json.loads(marker.read_text())["started"])
            except (OSError, ValueError, KeyError):
                started = datetime.fromtimestamp(0, UTC)
            since = started if since is None else min(since, started)
            marker.unlink(missing_ok=True)
        if since is not None:
            dropped = 0
            with self.sessions() as session, session.begin():
                for row in session.scalars(select(Instance).where(Instance.received_at >= since)):
                    if not self.storage.exists(row.storage_key):
                        session.delete(row)
                        dropped += 1
            if dropped:
                log.warning(
                    "recovery after an unclean stop: dropped %d unacknowledged rows", dropped
                )
        marker = run_dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        marker.write_text(json.dumps({"started": datetime.now(UTC).isoformat()}))
        return marker

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- extension points ----------------------------------------------------------------

    def add_guard(self, guard: Guard) -> None:
        """Run ``guard(parsed, source)`` on every instance before it is stored; a
        :class:`CiamsError` it raises quarantines the instance with that reason."""
        self._guards.append(guard)

    def add_listener(self, listener: CommitListener) -> None:
        """Call ``listener(batch)`` after each committed index batch (not for rejects)."""
        with self._listener_lock:
            self._listeners.append(listener)

    def _notify(self, batch: list[tuple[IndexRequest, IndexOutcome]]) -> None:
        for listener in list(self._listeners):
            listener(batch)

    # -- ingest --------------------------------------------------------------------------

    def ingest(
        self,
        data: bytes | bytearray,
        source: dict[str, str] | None = None,
        *,
        study: str | None = None,
    ) -> IngestResult:
        """Store one DICOM Part 10 instance. Returns once bytes and index row are durable
        (or the input is in quarantine with its reason). With ``study``, an instance of
        any other study is refused (a store to one study's resource)."""
        source = dict(source or {})
        with self._ingest_lock:
            self._ingesting += 1
            alone = self._ingesting == 1
        try:
            return self._ingest(data, source, alone=alone, study=study)
        finally:
            with self._ingest_lock:
                self._ingesting -= 1

    def _ingest(
        self, data: bytes | bytearray, source: dict[str, str], *, alone: bool, study: str | None
    ) -> IngestResult:
        pending: Future[Staged]
        if alone:
            # The bytes are written on another thread while this one hashes and parses
            # them: both release the GIL for the bulk of their work, and the write's cost
            # (page cache, start of writeback) is off the acknowledgement's critical path.
            # With other ingests running there is parallelism already, and more threads
            # only contend for the GIL.
            pending = self._stager.submit(self.storage.stage, data)
        else:
            pending = Future()
            try:
                pending.set_result(self.storage.stage(data))
            except CiamsError as exc:
                pending.set_exception(exc)
        parsed: ParsedInstance | None = None
        try:
            parsed = parse_instance(data)
            if study is not None and parsed.study_instance_uid != study:
                raise StudyMismatchError(f"instance belongs to another study than {study}")
            for guard in self._guards:
                guard(parsed, source)
            parsed.values  # noqa: B018 - index values are computed here, off the writer thread
        except CiamsError as exc:
            _discard(pending)
            return self._reject(data, exc, source, parsed=parsed)
        except BaseException:
            _discard(pending)
            raise
        try:
            staged = pending.result()
        except CiamsError as exc:
            return self._reject(data, exc, source, parsed=parsed, status="failed")
        ids = _ids(parsed)
        key = content_key(parsed.sha256)
        try:
            staged.commit(key)  # the index writer syncs
            outcome = self._writer.submit(IndexRequest(parsed, key, source))
        except CiamsError as exc:
            return self._reject(data, exc, source, parsed=parsed, status="failed")
        if outcome.outcome == "out-of-scope":
            self._drop_unreferenced(key, parsed.sha256)
            denied = AccessDeniedError(
                f"cannot store into study {parsed.study_instance_uid}: it belongs to "
                "another trial or site"
            )
            return self._reject(data, denied, source, parsed=parsed)
        if outcome.outcome == "conflict":
            self._drop_unreferenced(key, parsed.sha256)
            conflict = ConflictError(
                f"SOP Instance UID {parsed.sop_instance_uid} is already stored with "
                f"different content (sha256 {outcome.previous_sha256[:12]}...)"
            )
            return self._reject(data, conflict, source, parsed=parsed, status="conflict")
        return IngestResult(status=_ACCEPTED[outcome.outcome], **ids)

    def _reject(
        self,
        data: bytes | bytearray,
        exc: CiamsError,
        source: dict[str, str],
        *,
        parsed: ParsedInstance | None,
        status: Status = "rejected",
    ) -> IngestResult:
        # Refused before parsing completed: whatever UIDs the bytes still show.
        ids = _ids(parsed) if parsed is not None else identify(data)
        entry = self.quarantine.put(
            data,
            reason=exc.message,
            code=exc.code,
            source=source,
            sop_instance_uid=ids.get("sop_instance_uid", ""),
        )
        log.info("quarantined input %s: %s", entry.id, exc.code)
        return IngestResult(
            status=status,
            **ids,
            reason=exc.message,
            error=exc,
            quarantine_id=entry.id,
        )

    def _drop_unreferenced(self, key: str, sha: str) -> None:
        with self.sessions() as session:
            used = session.scalar(
                select(func.count()).select_from(Instance).where(Instance.sha256 == sha)
            ) or session.scalar(
                select(func.count())
                .select_from(InstanceVersion)
                .where(InstanceVersion.sha256 == sha)
            )
        if not used:
            self.storage.delete(key)

    def ingest_file(self, path: Path, source: dict[str, str] | None = None) -> IngestResult:
        """Ingest a file from disk."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return IngestResult(status="failed", reason=f"cannot read {path}: {exc.strerror}")
        return self.ingest(data, dict(source or {}, interface="import"))

    # -- reads ---------------------------------------------------------------------------

    def find(self, query: FindQuery, *, scope: Scope = EVERYTHING) -> list[Dataset]:
        """Matching datasets with the requested return keys (indexed ones from the index,
        the others from a stored file of the matched object)."""
        with self.sessions() as session:
            result = find(session, query, scope=scope)
            if not result.file_keys or not result.matches:
                return result.matches
            keys = result.storage_keys
            if query.level != "IMAGE":
                keys = self._representative_keys(session, query.level, result.matches)
        for ds, key in zip(result.matches, keys, strict=True):
            header = self._header(key) if key else None
            for keyword in result.file_keys:
                if header is not None and keyword in header:
                    ds[keyword] = header[keyword]
                else:
                    ds.add_new(keyword, pydicom.datadict.dictionary_VR(keyword), None)
        return result.matches

    def _representative_keys(
        self, session: Session, level: str, matches: list[Dataset]
    ) -> list[str]:
        keys = []
        for ds in matches:
            stmt = select(Instance.storage_key).join(Series, Instance.series_pk == Series.id)
            if level == "SERIES" and ds.get("SeriesInstanceUID"):
                stmt = stmt.where(Series.series_instance_uid == ds.SeriesInstanceUID)
            elif level == "STUDY" and ds.get("StudyInstanceUID"):
                stmt = stmt.join(Study, Series.study_pk == Study.id).where(
                    Study.study_instance_uid == ds.StudyInstanceUID
                )
            elif level == "PATIENT" and ds.get("PatientID") is not None:
                stmt = (
                    stmt.join(Study, Series.study_pk == Study.id)
                    .join(Patient, Study.patient_pk == Patient.id)
                    .where(Patient.patient_id == (ds.PatientID or ""))
                )
            else:
                keys.append("")
                continue
            keys.append(session.scalar(stmt.order_by(Instance.id).limit(1)) or "")
        return keys

    def _header(self, key: str) -> Dataset | None:
        try:
            with self.storage.open(key) as fh:
                return pydicom.dcmread(fh, stop_before_pixels=True)
        except (StorageError, OSError, pydicom.errors.InvalidDicomError):
            return None

    def instances(
        self,
        study_uid: str | None = None,
        series_uid: str | None = None,
        sop_uid: str | None = None,
        *,
        scope: Scope = EVERYTHING,
    ) -> list[InstanceRef]:
        """Stored instances of a study / series / instance, in series and instance order."""
        stmt = (
            select(Instance, Series.series_instance_uid, Study.study_instance_uid)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
        )
        if study_uid:
            stmt = stmt.where(Study.study_instance_uid == study_uid)
        if series_uid:
            stmt = stmt.where(Series.series_instance_uid == series_uid)
        if sop_uid:
            stmt = stmt.where(Instance.sop_instance_uid == sop_uid)
        visible = scope.study_clause()
        if visible is not None:
            stmt = stmt.where(visible)
        stmt = stmt.order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
        with self.sessions() as session:
            rows = session.execute(stmt).all()
        return [
            InstanceRef(
                study_instance_uid=study,
                series_instance_uid=series,
                sop_instance_uid=inst.sop_instance_uid,
                sop_class_uid=inst.sop_class_uid,
                transfer_syntax_uid=inst.transfer_syntax_uid,
                storage_key=inst.storage_key,
                size=inst.size,
                sha256=inst.sha256,
                number_of_frames=inst.number_of_frames,
                instance_number=inst.instance_number,
            )
            for inst, series, study in rows
        ]

    def instances_or_404(self, *args: str | None, **kwargs: Any) -> list[InstanceRef]:
        """Like :meth:`instances`, raising :class:`NotFoundError` when nothing matches."""
        refs = self.instances(*args, **kwargs)
        if not refs:
            raise NotFoundError("no such study, series or instance")
        return refs

    def read(self, ref: InstanceRef) -> bytes:
        """The stored bytes of an instance."""
        return self.storage.get(ref.storage_key)

    def dataset(self, ref: InstanceRef, *, stop_before_pixels: bool = False) -> Dataset:
        """The stored instance parsed by pydicom."""
        with self.storage.open(ref.storage_key) as fh:
            return pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)

    def list_studies(
        self,
        *,
        patient_id: str | None = None,
        patient_name: str | None = None,
        study_date: str | None = None,
        modality: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[StudySummary]:
        """Studies newest first, with counts and size (for listings)."""
        filters = {
            "PatientID": patient_id or "",
            "PatientName": patient_name or "",
            "StudyDate": study_date or "",
            "ModalitiesInStudy": modality or "",
        }
        q = FindQuery(
            level="STUDY",
            filters={k: v for k, v in filters.items() if v},
            return_keys=[
                "StudyInstanceUID",
                "PatientID",
                "PatientName",
                "StudyDate",
                "StudyDescription",
                "AccessionNumber",
                "ModalitiesInStudy",
                "NumberOfStudyRelatedSeries",
                "NumberOfStudyRelatedInstances",
            ],
        )
        with self.sessions() as session:
            matches = find(session, q).matches
            uids = [str(m.StudyInstanceUID) for m in matches]
            stats = dict(
                session.execute(
                    select(Study.study_instance_uid, func.coalesce(func.sum(Instance.size), 0))
                    .join(Series, Series.study_pk == Study.id)
                    .join(Instance, Instance.series_pk == Series.id)
                    .where(Study.study_instance_uid.in_(uids))
                    .group_by(Study.study_instance_uid)
                ).all()
            )
            created = dict(
                session.execute(
                    select(Study.study_instance_uid, Study.created_at).where(
                        Study.study_instance_uid.in_(uids)
                    )
                ).all()
            )
        out = [
            StudySummary(
                study_instance_uid=str(m.StudyInstanceUID),
                patient_id=str(m.get("PatientID") or ""),
                patient_name=str(m.get("PatientName") or ""),
                study_date=str(m.get("StudyDate") or ""),
                study_description=str(m.get("StudyDescription") or ""),
                accession_number=str(m.get("AccessionNumber") or ""),
                modalities="\\".join(m.get("ModalitiesInStudy") or []),
                series=int(m.get("NumberOfStudyRelatedSeries") or 0),
                instances=int(m.get("NumberOfStudyRelatedInstances") or 0),
                size=int(stats.get(str(m.StudyInstanceUID), 0)),
                created_at=created[str(m.StudyInstanceUID)],
            )
            for m in matches
        ]
        out.sort(key=lambda s: s.created_at, reverse=True)
        return out[offset : offset + limit]

    def export(
        self, study_uid: str, dest: Path, progress: Callable[[int, int], None] | None = None
    ) -> list[Path]:
        """Copy a study's instances to ``dest/<series>/<sop>.dcm``, verifying each hash."""
        refs = self.instances_or_404(study_uid)
        written: list[Path] = []
        for n, ref in enumerate(refs, 1):
            data = self.read(ref)
            if hashlib.sha256(data).hexdigest() != ref.sha256:
                raise StorageError(
                    f"stored file of {ref.sop_instance_uid} is corrupt (hash mismatch)",
                    hint="run `ciams fsck` and restore it from a replica",
                )
            target = Path(dest) / ref.series_instance_uid / f"{ref.sop_instance_uid}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written.append(target)
            if progress:
                progress(n, len(refs))
        return written

    def fsck(self, progress: Callable[[int, int], None] | None = None) -> FsckReport:
        """Re-hash every stored file against the index: missing, corrupt and orphan files."""
        with self.sessions() as session:
            rows = [
                (str(key), str(sha))
                for key, sha in [
                    *session.execute(select(Instance.storage_key, Instance.sha256)).all(),
                    *session.execute(
                        select(InstanceVersion.storage_key, InstanceVersion.sha256)
                    ).all(),
                ]
            ]
        report = FsckReport()
        expected = {key for key, _ in rows}
        for n, (key, sha) in enumerate(rows, 1):
            report.checked += 1
            if not self.storage.exists(key):
                report.missing.append(key)
            elif not self.storage.verify(key, sha):
                report.corrupt.append(key)
            if progress:
                progress(n, len(rows))
        report.orphans = sorted(set(self.storage.keys()) - expected)
        return report

    def counts(self) -> dict[str, int]:
        """Number of patients, studies, series and instances."""
        with self.sessions() as session:
            return {
                name: int(session.scalar(select(func.count()).select_from(model)) or 0)
                for name, model in (
                    ("patients", Patient),
                    ("studies", Study),
                    ("series", Series),
                    ("instances", Instance),
                )
            }

    # -- series completion (driven by the task queue) ------------------------------------

    def series_last_received(self, series_uid: str) -> tuple[datetime | None, datetime | None]:
        """(newest instance receipt, completion mark) of a series."""
        with self.sessions() as session:
            row = session.execute(
                select(func.max(Instance.received_at), Series.completed_at)
                .join(Instance, Instance.series_pk == Series.id)
                .where(Series.series_instance_uid == series_uid)
                .group_by(Series.id)
            ).first()
        if row is None:
            return None, None
        return _aware(row[0]), _aware(row[1])

    def mark_series_complete(self, series_uid: str) -> None:
        with self.sessions() as session, session.begin():
            series = session.scalar(select(Series).where(Series.series_instance_uid == series_uid))
            if series is not None:
                series.completed_at = datetime.now(UTC)

    def iter_instance_files(self) -> Iterator[tuple[InstanceRef, Path | None]]:
        """Every stored instance with its local path (when the backend has one)."""
        for ref in self.instances():
            yield ref, self.storage.local_path(ref.storage_key)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def read_dataset(data: bytes) -> Dataset:
    """Parse bytes already known to be valid."""
    return pydicom.dcmread(BytesIO(data))


__all__ = [
    "Archive",
    "FsckReport",
    "IngestResult",
    "InstanceRef",
    "InvalidInstanceError",
    "StudySummary",
]
