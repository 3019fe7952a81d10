"""The index writer: one thread that commits index rows in groups (group commit).

Every ingest path hands its parsed instance here and waits for the commit. Batching
whatever is waiting into one transaction keeps the per-instance fsync cost low when
several associations store in parallel, and a single writer makes get-or-create of
patient/study/series race-free on SQLite. On PostgreSQL, other processes may write
too, so get-or-create still retries on a unique-key conflict.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ciams.archive.models import Instance, InstanceVersion, Patient, Series, Study
from ciams.archive.parse import ParsedInstance
from ciams.errors import StorageError

log = logging.getLogger(__name__)

# Built once: per-instance statements with bound parameters hit SQLAlchemy's compiled
# cache directly (literal values would make it rebuild a cache key every time).
_FIND_INSTANCE = select(
    Instance.id,
    Instance.sha256,
    Instance.version,
    Instance.storage_key,
    Instance.size,
    Instance.received_at,
).where(Instance.sop_instance_uid == bindparam("uid"))
_INSERT_INSTANCE = insert(Instance.__table__)  # type: ignore[arg-type]


def _insert_if_new(dialect: str) -> Any:
    """INSERT of an instance row that returns its id, or nothing when its SOP Instance
    UID is already indexed (one statement instead of a lookup and an insert); None when
    the database has no such statement."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as upsert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert  # type: ignore[assignment]
    else:
        return None
    table: Any = Instance.__table__
    return (
        upsert(table)
        .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
        .returning(Instance.id)
    )


Outcome = Literal["stored", "duplicate", "versioned", "conflict", "out-of-scope"]


@dataclass(frozen=True)
class IndexRequest:
    parsed: ParsedInstance
    storage_key: str
    source: dict[str, str]


@dataclass(frozen=True)
class IndexOutcome:
    outcome: Outcome
    new_series: bool = False
    previous_sha256: str = ""


class IndexWriter:
    """Commits :class:`IndexRequest` s in batches (group commit), on the callers' threads.

    The first caller to find no commit running leads: it commits everything waiting,
    its own request included, while later callers queue up behind it; when it is done,
    one of those still waiting leads the next batch. A lone association thus commits
    on its own thread with no hand-over, and parallel ones share a transaction and one
    flush.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        on_conflict: Literal["reject", "version"],
        batch_max: int = 64,
        on_commit: Callable[[list[tuple[IndexRequest, IndexOutcome]]], None] | None = None,
        sync: Callable[[], None] | None = None,
        sync_after_commit: bool = False,
    ) -> None:
        self._engine = engine
        # One connection kept for the writer: checking one out of the pool and resetting
        # it on return cost more per commit than the commit itself.
        self._conn: Connection | None = None
        self._insert_if_new = _insert_if_new(engine.dialect.name)
        self._sync = sync or (lambda: None)
        self._sync_after_commit = sync_after_commit
        self._on_conflict = on_conflict
        self._batch_max = max(1, batch_max)
        self._on_commit = on_commit
        self._cond = threading.Condition()
        self._pending: list[tuple[IndexRequest, Future[IndexOutcome]]] = []
        self._leading = False
        self._closed = False
        self._series_cache: dict[str, int] = {}
        self._study_cache: dict[str, tuple[int, str, str]] = {}
        self._patient_cache: dict[tuple[str, str], int] = {}

    def submit(self, request: IndexRequest) -> IndexOutcome:
        """Index one instance; returns once its row is committed (durable)."""
        fut: Future[IndexOutcome] = Future()
        with self._cond:
            if self._closed:
                raise StorageError("the archive is shutting down")
            self._pending.append((request, fut))
            while self._leading and not fut.done():
                self._cond.wait()
            if fut.done():
                return fut.result()
            self._leading = True
        try:
            while not fut.done():
                with self._cond:
                    batch = self._pending[: self._batch_max]
                    del self._pending[: len(batch)]
                try:
                    self._commit_batch(batch)
                except BaseException as exc:  # never leave a waiting caller behind
                    for _, other in batch:
                        if not other.done():
                            other.set_exception(StorageError(f"index write interrupted: {exc!r}"))
                    raise
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()
        return fut.result()

    def close(self) -> None:
        """Refuse new requests and wait for the running commits."""
        with self._cond:
            self._closed = True
            while self._leading or self._pending:
                if not self._cond.wait(timeout=30):
                    break
            self._drop_connection()

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.invalidated or self._conn.closed:
            self._conn = self._engine.connect()
        return self._conn

    def _drop_connection(self) -> None:
        """Forget the writer's connection (after an error it may be unusable)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing the index connection failed", exc_info=True)

    def _commit_batch(self, batch: list[tuple[IndexRequest, Future[IndexOutcome]]]) -> None:
        try:
            if not self._sync_after_commit:
                self._sync()  # the files first: a durable row never points at a lost file
            conn = self._connection()
            with conn.begin():
                outcomes = [self._apply(conn, req) for req, _ in batch]
            if self._sync_after_commit:
                # One flush makes the batch's files and the SQLite WAL durable together;
                # a crash before it loses only unacknowledged work (see Archive._recover).
                self._sync()
        except Exception:
            self._clear_caches()
            self._drop_connection()
            if len(batch) > 1:
                for one in batch:
                    self._commit_batch([one])
                return
            _, fut = batch[0]
            log.exception("index write failed for one instance")
            fut.set_exception(StorageError("the index could not record the instance"))
            return
        pairs = [(req, out) for (req, _), out in zip(batch, outcomes, strict=True)]
        for (_, fut), out in zip(batch, outcomes, strict=True):
            fut.set_result(out)
        if self._on_commit is not None:
            try:
                self._on_commit(pairs)
            except Exception:
                log.exception("post-commit listener failed")

    def _clear_caches(self) -> None:
        """Forget cached primary keys (after a rollback they may not exist)."""
        self._series_cache.clear()
        self._study_cache.clear()
        self._patient_cache.clear()

    def _apply(self, conn: Connection, req: IndexRequest) -> IndexOutcome:
        # Core statements rather than ORM objects: this runs once per stored instance
        # and the ORM's unit of work cost more than the SQL itself.
        parsed = req.parsed
        now = datetime.now(UTC)
        values = parsed.values
        values["study"]["trial_code"] = req.source.get("trial", "")[:64]
        values["study"]["site_code"] = req.source.get("site", "")[:64]
        owner = self._study_owner(conn, values["study"]["study_instance_uid"])
        if (
            owner is not None
            and req.source.get("scoped")
            and owner
            != (
                values["study"]["trial_code"],
                values["study"]["site_code"],
            )
        ):
            # A scoped sender may not add to (or replace in) another trial's or site's study.
            return IndexOutcome("out-of-scope")
        series_pk = self._series_cache.get(values["series"]["series_instance_uid"])
        if series_pk is not None and self._insert_if_new is not None:
            # A known series: try the insert first; the usual case is then one statement.
            row = self._instance_row(req, values, series_pk, now)
            # RETURNING rather than rowcount, which drivers do not all report for inserts.
            if conn.execute(self._insert_if_new, dict(row, version=1)).first() is not None:
                return IndexOutcome("stored")
        existing = conn.execute(_FIND_INSTANCE, {"uid": parsed.sop_instance_uid}).first()
        if existing is not None and existing.sha256 == parsed.sha256:
            return IndexOutcome("duplicate")
        if existing is not None and self._on_conflict == "reject":
            return IndexOutcome("conflict", previous_sha256=existing.sha256)
        series_pk, new_series = self._series_pk(conn, values, now)
        row = self._instance_row(req, values, series_pk, now)
        if existing is None:
            conn.execute(_INSERT_INSTANCE, dict(row, version=1))
            return IndexOutcome("stored", new_series=new_series)
        conn.execute(
            insert(InstanceVersion).values(
                sop_instance_uid=parsed.sop_instance_uid,
                version=existing.version,
                sha256=existing.sha256,
                storage_key=existing.storage_key,
                size=existing.size,
                received_at=existing.received_at,
                superseded_at=now,
            )
        )
        conn.execute(
            update(Instance)
            .where(Instance.id == existing.id)
            .values(dict(row, version=existing.version + 1))
        )
        return IndexOutcome("versioned", new_series=new_series, previous_sha256=existing.sha256)

    @staticmethod
    def _instance_row(
        req: IndexRequest, values: dict[str, dict[str, Any]], series_pk: int, now: datetime
    ) -> dict[str, Any]:
        return dict(
            values["instance"],
            series_pk=series_pk,
            storage_key=req.storage_key,
            received_at=now,
            calling_ae=req.source.get("calling_ae", "")[:16],
            remote_address=req.source.get("remote_address", "")[:64],
            interface=req.source.get("interface", "")[:16],
        )

    def _series_pk(
        self, conn: Connection, values: dict[str, dict[str, Any]], now: datetime
    ) -> tuple[int, bool]:
        uid = values["series"]["series_instance_uid"]
        cached = self._series_cache.get(uid)
        if cached is not None:
            return cached, False
        found = conn.scalar(select(Series.id).where(Series.series_instance_uid == uid))
        if found is not None:
            self._series_cache[uid] = found
            return found, False
        study_pk = self._study_pk(conn, values, now)
        pk = _get_or_create(
            conn,
            Series,
            Series.series_instance_uid == uid,
            dict(values["series"], study_pk=study_pk, created_at=now),
        )
        self._series_cache[uid] = pk
        return pk, True

    def _study_owner(self, conn: Connection, uid: str) -> tuple[str, str] | None:
        """(trial, site) of a stored study, None when the study is new."""
        cached = self._study_cache.get(uid)
        if cached is not None:
            return cached[1], cached[2]
        row = conn.execute(
            select(Study.id, Study.trial_code, Study.site_code).where(
                Study.study_instance_uid == uid
            )
        ).first()
        if row is None:
            return None
        self._study_cache[uid] = (row[0], row[1], row[2])
        return row[1], row[2]

    def _study_pk(self, conn: Connection, values: dict[str, dict[str, Any]], now: datetime) -> int:
        study = values["study"]
        uid = study["study_instance_uid"]
        cached = self._study_cache.get(uid)
        if cached is not None:
            return cached[0]
        patient_pk = self._patient_pk(conn, values, now)
        pk = _get_or_create(
            conn,
            Study,
            Study.study_instance_uid == uid,
            dict(study, patient_pk=patient_pk, created_at=now),
        )
        self._study_cache[uid] = (pk, study["trial_code"], study["site_code"])
        return pk

    def _patient_pk(
        self, conn: Connection, values: dict[str, dict[str, Any]], now: datetime
    ) -> int:
        pv = values["patient"]
        key = (pv["patient_id"], pv["issuer_of_patient_id"])
        cached = self._patient_cache.get(key)
        if cached is not None:
            return cached
        pk = _get_or_create(
            conn,
            Patient,
            (Patient.patient_id == key[0]) & (Patient.issuer_of_patient_id == key[1]),
            dict(pv, created_at=now),
        )
        self._patient_cache[key] = pk
        return pk


def _get_or_create(conn: Connection, model: Any, where: Any, values: dict[str, Any]) -> int:
    """Primary key of the row matching ``where``, inserting it when absent."""
    found = conn.scalar(select(model.id).where(where))
    if found is not None:
        return int(found)
    try:
        with conn.begin_nested():
            result = conn.execute(insert(model.__table__).values(values))
            key = result.inserted_primary_key
            if key is None:
                raise StorageError("the database returned no key for a new row")
            return int(key[0])
    except IntegrityError:
        # Another process created it between our select and insert.
        found = conn.scalar(select(model.id).where(where))
        if found is None:
            raise
        return int(found)
