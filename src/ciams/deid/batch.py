"""Batch de-identification of files, folders and ZIP archives across processes.

Used by ``ciams deid`` and usable by the site gateway.  Inputs are read in the
workers (file paths) or handed to them as bytes (ZIP members); each worker builds
its :class:`~ciams.deid.engine.Deidentifier` once.  Outputs are written under
generated names (``<subject>/<new SOP Instance UID>.dcm``); anything that cannot be
de-identified safely goes to ``<output>/quarantine/`` with the original bytes and a
``<name>.reason.json`` beside it.  Nothing is overwritten: an existing output with
different content is a conflict and goes to quarantine too.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ciams.deid.engine import Deidentifier
from ciams.deid.errors import LeakDetectedError
from ciams.deid.fastpath import FileRange
from ciams.deid.recipe import Recipe
from ciams.errors import CiamsError

if TYPE_CHECKING:
    from pydicom import Dataset

log = logging.getLogger(__name__)
QUARANTINE = "quarantine"
CHUNK = 16


@dataclass(frozen=True)
class Item:
    """One input: a file path, or a member of a ZIP archive."""

    name: str
    path: str
    member: str | None = None


@dataclass
class Outcome:
    """What happened to one input."""

    name: str
    status: str  # deidentified | duplicate | quarantined | skipped | failed
    output: str = ""
    reason: str = ""
    code: str = ""
    subject: str = ""
    new_subject: tuple[str, str] | None = None
    redactions: int = 0


@dataclass
class Summary:
    """Totals of a batch run."""

    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def quarantined(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "quarantined"]


def iter_inputs(source: Path) -> Iterator[Item]:
    """Every file under ``source`` (a file, a folder or a ``.zip``), ZIP members included."""
    paths = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for p in paths:
        rel = p.name if p == source else str(p.relative_to(source))
        if p.suffix.lower() == ".zip" and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        yield Item(f"{rel}!{info.filename}", str(p), info.filename)
        else:
            yield Item(rel, str(p))


# -- worker side -----------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(
    recipe: Recipe,
    subjects: dict[str, str],
    secret: bytes,
    site: str | None,
    output: str,
    own_process: bool = True,
) -> None:
    if own_process:
        # the worker processes are ours: skip pydicom's per-value validation (the
        # leak guard and the writer check what matters), it costs a third of the time;
        # few reference cycles are made per file: collect rarely, and the objects
        # inherited from the parent were frozen before the fork (no copy-on-write by GC)
        gc.set_threshold(50_000, 20, 20)
        _WORKER["relaxed"] = True
    _WORKER["deid"] = Deidentifier(recipe, subjects, secret, site=site)
    _WORKER["output"] = Path(output)


def _read(item: Item) -> bytes:
    if item.member is None:
        return Path(item.path).read_bytes()
    with zipfile.ZipFile(item.path) as zf:
        return zf.read(item.member)


_MADE_DIRS: set[Path] = set()


def _copy_range(src: FileRange, fd: int) -> None:
    """Append ``src`` to the open file ``fd``, in the kernel when it can."""
    src_fd = os.open(src.path, os.O_RDONLY)
    try:
        offset, left = src.offset, src.length
        try:
            while left:
                done = os.copy_file_range(src_fd, fd, left, offset)
                if done <= 0:
                    break
                offset += done
                left -= done
        except OSError:
            pass  # not supported here: copy through user space
        while left:
            chunk = os.pread(src_fd, min(left, 1 << 20), offset)
            if not chunk:
                raise OSError(f"{src.path} changed while it was de-identified")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            offset += len(chunk)
            left -= len(chunk)
    finally:
        os.close(src_fd)


def _write_new(path: Path, parts: tuple[bytes, bytes | memoryview | FileRange]) -> str:
    """Create ``path`` exclusively; 'duplicate' if the same bytes exist, 'conflict' if others do.

    ``O_EXCL`` creation never overwrites; a half-written file left by a crash differs
    from the next attempt and is reported as a conflict, never silently kept.
    """
    parent = path.parent
    if parent not in _MADE_DIRS:
        parent.mkdir(parents=True, exist_ok=True)
        _MADE_DIRS.add(parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        existing = path.read_bytes()
        wanted = b"".join(p.read() if isinstance(p, FileRange) else p for p in parts)
        return "duplicate" if existing == wanted else "conflict"
    try:
        for part in parts:
            if isinstance(part, FileRange):
                _copy_range(part, fd)
            else:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return "written"


def quarantine(
    output: Path,
    item: Item,
    data: bytes,
    reason: str,
    code: str,
    details: dict[str, Any] | None = None,
) -> str:
    """Keep the original bytes under ``output/quarantine`` with a reason file."""
    qdir = output / QUARANTINE
    qdir.mkdir(parents=True, exist_ok=True)
    base = Path(item.name.replace("!", "/")).name or "input"
    target = qdir / base
    n = 1
    while target.exists() or target.with_name(target.name + ".reason.json").exists():
        target = qdir / f"{base}.{n}"
        n += 1
    target.write_bytes(data)
    body = {"source": item.name, "reason": reason, "code": code, **(details or {})}
    target.with_name(target.name + ".reason.json").write_text(json.dumps(body, indent=2))
    return str(target.relative_to(output))


class _NotComposite(Exception):
    """The file is not a composite instance (no SOP Class / Instance UID)."""


class _DicomDir(Exception):
    """The file is a DICOMDIR."""


#: errors that mean "this is not a readable DICOM file" rather than a failure of ours
_UNREADABLE = (_NotComposite, ValueError, EOFError, OSError, KeyError, TypeError)


def _accept(ds: Dataset) -> None:
    """Refuse DICOMDIRs and non-composite files before the dataset path runs."""
    if _WORKER.get("relaxed") and not _WORKER.get("relaxed_done"):
        # our own worker process: skip pydicom's per-value validation (the leak guard
        # and the writer check what matters), it costs a third of the dataset path
        from pydicom import config

        config.settings.reading_validation_mode = config.IGNORE
        config.settings.writing_validation_mode = config.IGNORE
        _WORKER["relaxed_done"] = True
    if str(ds.get("SOPClassUID", "")) == "1.2.840.10008.1.3.10":
        raise _DicomDir
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise _NotComposite("not a composite instance")


def process_item(deid: Deidentifier, output: Path, item: Item) -> Outcome:
    """De-identify one input and write it (or quarantine it)."""
    with warnings.catch_warnings():
        # pydicom warns about every oddity of real-world files; the outcome says what matters
        warnings.simplefilter("ignore")
        return _process_item(deid, output, item)


def _process_item(deid: Deidentifier, output: Path, item: Item) -> Outcome:
    data: bytes | None = None

    def original() -> bytes:
        nonlocal data
        if data is None:
            data = _read(item)
        return data

    try:
        if item.member is None:  # a plain file: the fast path copies pixels file to file
            result = deid.deidentify_file(item.path, accept=_accept)
        else:
            result = deid.deidentify_bytes(original(), accept=_accept)
    except LeakDetectedError as exc:
        details = {"leaks": [{"where": x.where, "kind": x.kind} for x in exc.leaks]}
        where = quarantine(output, item, original(), exc.message, exc.code, details)
        return Outcome(item.name, "quarantined", where, exc.message, exc.code)
    except CiamsError as exc:
        where = quarantine(output, item, original(), str(exc), exc.code)
        return Outcome(item.name, "quarantined", where, exc.message, exc.code)
    except _DicomDir:
        return Outcome(item.name, "skipped", reason="DICOMDIR (rebuilt, not copied)")
    except Exception as exc:  # a broken file must not stop the batch
        if not isinstance(exc, _UNREADABLE) and type(exc).__name__ != "InvalidDicomError":
            log.debug("de-identification failed", exc_info=True)
            reason = f"cannot de-identify: {type(exc).__name__}: {exc}"
            where = quarantine(output, item, original(), reason, "deid-error")
            return Outcome(item.name, "quarantined", where, reason, "deid-error")
        if isinstance(exc, OSError) and item.member is None and not Path(item.path).exists():
            return Outcome(item.name, "skipped", reason=f"cannot read: {exc}")
        if original()[128:132] == b"DICM" or item.name.lower().endswith(".dcm"):
            reason = f"unreadable DICOM: {exc}"
            where = quarantine(output, item, original(), reason, "deid-unreadable")
            return Outcome(item.name, "quarantined", where, reason, "deid-unreadable")
        return Outcome(item.name, "skipped", reason="not DICOM")
    assert result.parts is not None
    try:
        state = _write_new(output / result.filename, result.parts)
    except OSError as exc:
        reason = f"cannot write {result.filename}: {exc}"
        try:
            where = quarantine(output, item, original(), reason, "deid-write")
        except OSError:  # neither output nor quarantine writable: say so loudly
            return Outcome(item.name, "failed", reason=reason)
        return Outcome(item.name, "quarantined", where, reason, "deid-write")
    if state == "conflict":
        reason = f"{result.filename} exists with different content"
        where = quarantine(output, item, original(), reason, "deid-conflict")
        return Outcome(item.name, "quarantined", where, reason, "deid-conflict")
    new = None
    if result.new_subject:
        new = next(
            ((p, s) for p, s in deid.new_subjects.items() if s == result.subject_id),
            ("", result.subject_id),
        )
    return Outcome(
        item.name,
        "deidentified" if state == "written" else "duplicate",
        result.filename,
        subject=result.subject_id,
        new_subject=new,
        redactions=len(result.redactions),
    )


def _run_chunk(items: list[Item]) -> list[Outcome]:
    deid: Deidentifier = _WORKER["deid"]
    output: Path = _WORKER["output"]
    with warnings.catch_warnings():  # once per chunk (see process_item)
        warnings.simplefilter("ignore")
        return [_process_item(deid, output, it) for it in items]


def run_batch(
    source: Path,
    output: Path,
    recipe: Recipe,
    subjects: dict[str, str],
    secret: bytes,
    *,
    jobs: int = 0,
    site: str | None = None,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Summary:
    """De-identify everything under ``source`` into ``output``; ``jobs=0`` = all cores."""
    items = list(iter_inputs(source))
    if on_total:
        on_total(len(items))
    output.mkdir(parents=True, exist_ok=True)
    jobs = jobs or os.cpu_count() or 1
    summary = Summary()
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    init_args = (recipe, subjects, secret, site, str(output))
    if jobs == 1 or len(chunks) <= 1:  # in this process: leave its settings alone
        _init_worker(*init_args, own_process=False)
        for chunk in chunks:
            done = _run_chunk(chunk)
            summary.outcomes.extend(done)
            if on_progress:
                on_progress(len(done))
        return summary
    gc.collect()
    gc.freeze()
    with ProcessPoolExecutor(
        max_workers=jobs, initializer=_init_worker, initargs=init_args
    ) as pool:
        pending: set[Future[list[Outcome]]] = set()
        queue = iter(chunks)
        for chunk in queue:
            pending.add(pool.submit(_run_chunk, chunk))
            if len(pending) >= jobs * 4:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                done = fut.result()
                summary.outcomes.extend(done)
                if on_progress:
                    on_progress(len(done))
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(pool.submit(_run_chunk, nxt))
    return summary
