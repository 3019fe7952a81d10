"""STOW-RS: Store Instances (PS3.18 10.5) for ``application/dicom`` parts.

The request body is streamed through python-multipart's ``MultipartParser``; each
complete part goes to :meth:`Archive.ingest` in a worker thread while the next part is
still arriving, so receiving and storing overlap. The response is the Store Instances
Response Module (PS3.18 Annex I, Table I.1-1) as ``application/dicom+json``.

Failure Reason (0008,1197) values (PS3.18 Table I.2-2) come from the error's DIMSE
status in :mod:`ciams.errors`: C000 cannot understand (not DICOM, missing UIDs), A700
out of resources (storage), 0110 processing failure (anything else), A900 for an
instance of another study than the target resource (PS3.18 10.5.1: the instances
shall belong to that study). A conflict (same SOP Instance UID already stored with other
bytes, kept by ``archive.on_conflict = 'reject'``) is answered with 0111 *Duplicate SOP
Instance* (PS3.7 Annex C.4 general status), which Table I.2-2 allows as an additional
code since it has none of its own for this case.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import anyio
from fastapi import APIRouter, Request
from pydicom.dataset import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ciams.access import upload_source
from ciams.archive import IngestResult
from ciams.errors import (
    DIMSE_DUPLICATE_SOP,
    DIMSE_PROCESSING_FAILURE,
    InvalidRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from ciams.web.dicomweb.context import Context, instance_url, study_url
from ciams.web.dicomweb.media import DICOM, DICOM_JSON, MULTIPART

log = logging.getLogger(__name__)

ACCEPTED = f'{MULTIPART}; type="{DICOM}"'
MAX_PARTS_IN_FLIGHT = 16


@dataclass
class _Parts:
    """Callbacks for the multipart parser: collects headers and bytes of each part."""

    complete: list[tuple[bytearray, str]] = field(default_factory=list)
    # One buffer per part: the parser's slices appended to it are the only copy made.
    current: bytearray = field(default_factory=bytearray)
    in_part: bool = False
    started: int = 0
    ended: bool = False
    header_name: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    content_type: str = ""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._begin,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_header_field": lambda d, s, e: self.header_name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self.header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_end": self._finish,
        }

    def _begin(self) -> None:
        self.in_part, self.started = True, self.started + 1
        self.current, self.content_type = bytearray(), ""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.current += memoryview(data)[start:end]

    def _header_end(self) -> None:
        if bytes(self.header_name).strip().lower() == b"content-type":
            self.content_type = parse_options_header(bytes(self.header_value))[0].decode("latin-1")
        self.header_name.clear()
        self.header_value.clear()

    def _end(self) -> None:
        self.complete.append((self.current, self.content_type))
        self.in_part, self.current = False, bytearray()

    def _finish(self) -> None:
        self.ended = True

    def take(self) -> list[tuple[bytearray, str]]:
        done, self.complete = self.complete, []
        return done


@dataclass(frozen=True)
class _Failure:
    """A part refused before it reached the archive's ingest (kept in quarantine)."""

    sop_class_uid: str
    sop_instance_uid: str
    reason: str
    status: int


def register(router: APIRouter, ctx: Context) -> None:
    """Add the STOW-RS routes."""
    upload = ctx.access.require("upload")

    @router.post("/studies", tags=["STOW-RS"], summary="Store instances", dependencies=[upload])
    async def store(request: Request) -> Response:
        return await _store(ctx, request, None)

    @router.post(
        "/studies/{study}",
        tags=["STOW-RS"],
        summary="Store instances of one study",
        dependencies=[upload],
    )
    async def store_study(request: Request, study: str) -> Response:
        return await _store(ctx, request, study)


def _boundary(request: Request) -> bytes:
    value, params = parse_options_header(request.headers.get("content-type", ""))
    media = value.decode("latin-1").lower()
    part_type = params.get(b"type", b"").decode("latin-1").lower()
    if media != MULTIPART:
        raise UnsupportedMediaTypeError(
            f"STOW-RS accepts {ACCEPTED}, not {media or 'a body without Content-Type'}"
        )
    if part_type not in ("", DICOM):
        raise UnsupportedMediaTypeError(
            f"parts of type {part_type} are not supported; send {ACCEPTED} "
            "(Part 10 instances, not metadata with bulk data)"
        )
    boundary = params.get(b"boundary", b"")
    if not boundary:
        raise InvalidRequestError("the multipart/related Content-Type has no boundary")
    return boundary


async def _store(ctx: Context, request: Request, study: str | None) -> Response:
    boundary = _boundary(request)
    limit = ctx.settings.archive.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"the request body ({declared} bytes) exceeds max_upload_bytes ({limit} bytes)"
        )
    source = {
        "interface": "stow",
        "remote_address": request.client.host if request.client else "",
        # The uploader's trial and site: the study belongs to them from now on.
        **upload_source(request.state.principal),
    }
    parts = _Parts()
    try:
        parser = MultipartParser(boundary, parts.callbacks())  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidRequestError(f"invalid multipart boundary: {exc}") from exc
    results: list[IngestResult | _Failure | None] = []
    preamble = bytearray()  # bytes before the first part, kept only for quarantine
    problem = ""
    received = 0
    too_large = False

    # Parts waiting for ingest are held in memory: bounding them makes a slow disk slow
    # down the upload (TCP back-pressure) instead of growing the server's memory.
    in_flight = anyio.Semaphore(MAX_PARTS_IN_FLIGHT)

    async def ingest(index: int, data: bytes | bytearray, content_type: str) -> None:
        try:
            results[index] = await ctx.ingest(_ingest_part, ctx, data, content_type, study, source)
        except Exception:
            # A bug must not lose the other parts' answers, nor this part's bytes.
            log.exception("STOW-RS part %d failed unexpectedly", index)
            await ctx.ingest(_keep, ctx, data, source)
            results[index] = _Failure("", "", "internal error", DIMSE_PROCESSING_FAILURE)
        finally:
            in_flight.release()

    async with anyio.create_task_group() as tg:
        stream = request.stream()
        try:
            async for chunk in stream:
                received += len(chunk)
                if received > limit:
                    # Parse up to the limit, so complete parts are stored and the
                    # incomplete one is kept in quarantine, then stop reading.
                    too_large = True
                    chunk = chunk[: len(chunk) - (received - limit)]
                if not parts.started:
                    preamble.extend(chunk)
                try:
                    parser.write(chunk)
                except MultipartParseError as exc:
                    problem = f"malformed multipart body: {exc}"
                    break
                if parts.started:
                    preamble.clear()
                for data, content_type in parts.take():
                    await in_flight.acquire()
                    results.append(None)  # set by the ingest task
                    tg.start_soon(ingest, len(results) - 1, data, content_type)
                if too_large:
                    break
            else:
                if not parts.ended:
                    problem = "the multipart body ends before its closing boundary"
        except ClientDisconnect:
            problem = "the client disconnected before the body was complete"
    stored = sum(1 for r in results if isinstance(r, IngestResult) and r.ok)
    if too_large or problem:
        leftover = bytes(parts.current) if parts.in_part else bytes(preamble)
        if problem and not too_large:
            leftover += await _drain(stream, limit - received)
        reason = f"request body exceeds max_upload_bytes ({limit} bytes)" if too_large else problem
        if leftover:
            code = "payload-too-large" if too_large else "invalid-request"
            entry = await ctx.ingest(
                lambda: ctx.archive.quarantine.put(
                    leftover, reason=reason, code=code, source=source
                )
            )
            reason += f"; the incomplete part was kept in quarantine as {entry.id}"
        if results:
            reason += f"; {stored} of the {len(results)} complete instances before it were stored"
        if too_large:
            raise PayloadTooLargeError(reason)
        raise InvalidRequestError(reason, hint=f"send {ACCEPTED} with a valid boundary")
    if not results:
        raise InvalidRequestError("the request contains no instances")
    done = [r for r in results if r is not None]
    request.state.audit_objects = sorted(
        {r.study_instance_uid for r in done if isinstance(r, IngestResult) and r.ok}
    )
    return _response(ctx.root(request), study, done)


async def _drain(stream: object, budget: int) -> bytes:
    """The rest of a broken body, up to ``budget`` bytes, so quarantine keeps it whole."""
    kept = bytearray()
    try:
        async for chunk in stream:  # type: ignore[attr-defined]
            if len(kept) + len(chunk) > budget:
                kept.extend(chunk[: max(0, budget - len(kept))])
                break
            kept.extend(chunk)
    except ClientDisconnect:
        pass
    return bytes(kept)


def _ingest_part(
    ctx: Context,
    data: bytes | bytearray,
    content_type: str,
    study: str | None,
    source: dict[str, str],
) -> IngestResult | _Failure:
    """One part through the archive (worker thread)."""
    if content_type and content_type.lower() != DICOM:
        reason = f"part of type {content_type} is not {DICOM}"
        ctx.archive.quarantine.put(
            data, reason=reason, code="unsupported-media-type", source=source
        )
        return _Failure("", "", reason, 0xC000)
    return ctx.archive.ingest(with_preamble(data), source, study=study)


def _keep(ctx: Context, data: bytes | bytearray, source: dict[str, str]) -> None:
    try:
        ctx.archive.quarantine.put(data, reason="internal error", code="internal", source=source)
    except OSError:
        log.exception("could not quarantine a STOW-RS part")


def with_preamble(data: bytes | bytearray) -> bytes | bytearray:
    """A Part 10 file for a part sent without its 128-byte preamble and ``DICM`` prefix.

    PS3.18 8.6.1.1 parts are PS3.10 files, but common clients (dicomweb-client with a
    dataset built in memory) write File Meta Information without the preamble. When
    the part starts with a group 0002 element, the missing 132 bytes are added so the
    archive stores a valid file; nothing else changes.
    """
    if data[128:132] != b"DICM" and data[:2] == b"\x02\x00" and data[4:6].isalpha():
        return b"\x00" * 128 + b"DICM" + data
    return data


def _response(root: str, study: str | None, results: list[IngestResult | _Failure]) -> Response:
    """Store Instances Response Module (PS3.18 Table I.1-1) and status (Table 10.5.3-1)."""
    out = Dataset()
    referenced: list[Dataset] = []
    failed: list[Dataset] = []
    warnings: list[str] = []
    studies: set[str] = set()
    for result in results:
        item = Dataset()
        if isinstance(result, IngestResult) and result.ok:
            item.ReferencedSOPClassUID = result.sop_class_uid
            item.ReferencedSOPInstanceUID = result.sop_instance_uid
            item.RetrieveURL = instance_url(
                root, result.study_instance_uid, result.series_instance_uid, result.sop_instance_uid
            )
            studies.add(result.study_instance_uid)
            referenced.append(item)
            continue
        if isinstance(result, IngestResult):
            status = _failure_reason(result)
            reason = result.reason
            if result.quarantine_id:
                reason += f" (quarantine {result.quarantine_id})"
            sop_class, sop = result.sop_class_uid, result.sop_instance_uid
        else:
            status, reason = result.status, result.reason
            sop_class, sop = result.sop_class_uid, result.sop_instance_uid
        item.ReferencedSOPClassUID = sop_class or None
        item.ReferencedSOPInstanceUID = sop or None
        item.FailureReason = status
        failed.append(item)
        warnings.append(reason)
    # PS3.18 Table I.1-1: the Study's URL when the target resource names the study.
    if study is not None or len(studies) == 1:
        out.RetrieveURL = study_url(root, study if study is not None else studies.pop())
    if failed:
        out.FailedSOPSequence = failed
    if referenced:
        out.ReferencedSOPSequence = referenced
    status_code = 200 if not failed else 202 if referenced else 409
    headers = [("warning", f'299 ciams "{_quote(w)}"') for w in dict.fromkeys(warnings)][:20]
    response = Response(
        json.dumps(out.to_json_dict()), status_code=status_code, media_type=DICOM_JSON
    )
    for name, value in headers:
        response.headers.append(name, value)
    return response


def _failure_reason(result: IngestResult) -> int:
    """Failure Reason of a refused instance (see the module docstring)."""
    if result.status == "conflict":
        return DIMSE_DUPLICATE_SOP
    status = result.error.dimse_status if result.error else DIMSE_PROCESSING_FAILURE
    # A warning or success code cannot be a failure reason (PS3.18 Table I.2-2).
    warning = 0xB000 <= status <= 0xBFFF or status in (0x0000, 0x0107, 0x0116)
    return DIMSE_PROCESSING_FAILURE if warning else status


def _quote(text: str) -> str:
    # A Warning header's text is a quoted-string of visible ASCII (RFC 9111 5.5).
    clean = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return clean.replace("\\", "\\\\").replace('"', '\\"')[:300]
