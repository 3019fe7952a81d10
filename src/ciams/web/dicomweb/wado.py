"""WADO-RS: Retrieve Transaction (PS3.18 10.4) for instances, metadata, bulk data, frames
and rendered images.

Instances are streamed from the storage area as stored, without parsing, with a
Content-Length, when they are stored in the transfer syntax asked for: Explicit VR Little
Endian by default, any with ``transfer-syntax=*`` (PS3.18 8.7.3.5). Files are read in
batches in a worker thread, one batch ahead of the one being sent. Instances stored in
another syntax are decoded and re-encoded in Explicit VR Little Endian unless the client
asks for them as stored. Metadata (PS3.18 10.4.1.2, Annex F) refers to bulk data
elements, Pixel Data included, by BulkDataURI.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from fastapi import APIRouter, Request
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from starlette.responses import Response

from ciams.archive import InstanceRef
from ciams.errors import InvalidRequestError, NotAcceptableError, NotFoundError, StorageError
from ciams.web.dicomweb import pixels
from ciams.web.dicomweb.context import Context, instance_url
from ciams.web.dicomweb.media import (
    DICOM,
    DICOM_JSON,
    OCTET,
    choose_transfer_syntax,
    closing,
    multipart_response,
    new_boundary,
    parse_accept,
    part_header,
    part_ranges,
)

CHUNK = 4 * 1024 * 1024  # largest piece of one instance held in memory
# Bytes read in one worker-thread hop. One hop per instance costs more than reading a
# small instance from the page cache; a batch of several is read in one.
READ_AHEAD = 4 * 1024 * 1024
CRLF = b"\r\n"
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024
INSTANCE = "/studies/{study}/series/{series}/instances/{sop}"
THUMBNAIL = (128, 128)  # default thumbnail viewport (PS3.18 8.3.5.1.2 leaves it to us)


def register(router: APIRouter, ctx: Context) -> None:
    """Add the WADO-RS routes (PS3.18 Table 10.4.1-1)."""
    download = ctx.access.require("download")
    view = ctx.access.require("view")

    @router.get(
        "/studies/{study}", tags=["WADO-RS"], summary="Retrieve a study", dependencies=[download]
    )
    async def study(request: Request, study: str) -> Response:
        return await _instances(ctx, request, study, None, None)

    @router.get(
        "/studies/{study}/series/{series}",
        tags=["WADO-RS"],
        summary="Retrieve a series",
        dependencies=[download],
    )
    async def series(request: Request, study: str, series: str) -> Response:
        return await _instances(ctx, request, study, series, None)

    @router.get(INSTANCE, tags=["WADO-RS"], summary="Retrieve an instance", dependencies=[download])
    async def instance(request: Request, study: str, series: str, sop: str) -> Response:
        return await _instances(ctx, request, study, series, sop)

    @router.get(
        "/studies/{study}/metadata", tags=["WADO-RS"], summary="Study metadata", dependencies=[view]
    )
    async def study_metadata(request: Request, study: str) -> Response:
        return await _metadata(ctx, request, study, None, None)

    @router.get("/studies/{study}/series/{series}/metadata", tags=["WADO-RS"], dependencies=[view])
    async def series_metadata(request: Request, study: str, series: str) -> Response:
        return await _metadata(ctx, request, study, series, None)

    @router.get(
        INSTANCE + "/metadata", tags=["WADO-RS"], summary="Instance metadata", dependencies=[view]
    )
    async def instance_metadata(request: Request, study: str, series: str, sop: str) -> Response:
        return await _metadata(ctx, request, study, series, sop)

    @router.get(
        INSTANCE + "/frames/{frames}",
        tags=["WADO-RS"],
        summary="Retrieve frames",
        dependencies=[view],
    )
    async def frames(request: Request, study: str, series: str, sop: str, frames: str) -> Response:
        ref = await _one(ctx, request, study, series, sop)
        return await _frames(ctx, request, ref, _frame_numbers(frames))

    @router.get(
        INSTANCE + "/bulkdata/{tag}",
        tags=["WADO-RS"],
        summary="Retrieve bulk data",
        dependencies=[view],
    )
    async def bulkdata(request: Request, study: str, series: str, sop: str, tag: str) -> Response:
        ref = await _one(ctx, request, study, series, sop)
        return await _bulkdata(ctx, request, ref, tag)

    @router.get(
        INSTANCE + "/rendered", tags=["WADO-RS"], summary="Rendered instance", dependencies=[view]
    )
    async def rendered(request: Request, study: str, series: str, sop: str) -> Response:
        ref = await _one(ctx, request, study, series, sop)
        return await _rendered(ctx, request, ref, 1)

    @router.get(
        INSTANCE + "/thumbnail", tags=["WADO-RS"], summary="Instance thumbnail", dependencies=[view]
    )
    async def thumbnail(request: Request, study: str, series: str, sop: str) -> Response:
        ref = await _one(ctx, request, study, series, sop)
        return await _rendered(ctx, request, ref, 1, THUMBNAIL)

    @router.get(
        INSTANCE + "/frames/{frame}/rendered",
        tags=["WADO-RS"],
        summary="Rendered frame",
        dependencies=[view],
    )
    async def rendered_frame(
        request: Request, study: str, series: str, sop: str, frame: str
    ) -> Response:
        ref = await _one(ctx, request, study, series, sop)
        numbers = _frame_numbers(frame)
        if len(numbers) != 1:
            raise InvalidRequestError("a rendered frame resource names exactly one frame")
        return await _rendered(ctx, request, ref, numbers[0])


async def _refs(
    ctx: Context, request: Request, study: str, series: str | None, sop: str | None
) -> list[InstanceRef]:
    # The caller's scope: another site's object answers 404, like a missing one.
    return await ctx.read(
        functools.partial(
            ctx.archive.instances_or_404, study, series, sop, scope=request.state.scope
        )
    )


async def _one(ctx: Context, request: Request, study: str, series: str, sop: str) -> InstanceRef:
    return (await _refs(ctx, request, study, series, sop))[0]


# -- instances ---------------------------------------------------------------------------


async def _instances(
    ctx: Context, request: Request, study: str, series: str | None, sop: str | None
) -> Response:
    accept = parse_accept(request.headers.get("accept"))
    refs = await _refs(ctx, request, study, series, sop)
    target = choose_transfer_syntax(accept, {r.transfer_syntax_uid for r in refs})
    if target is not None:
        await ctx.read(_check_decodable, refs)
    boundary = new_boundary()
    batches, length = _plan(refs, target, boundary)
    # The first batch is read before the response starts: a missing or damaged file
    # there still gets an error status instead of a cut-off body.
    first = await ctx.read(_read_batch, ctx, batches[0])
    body = _instance_parts(ctx, first, batches[1:], boundary)
    return multipart_response(body, boundary, DICOM, length=length)


def _check_decodable(refs: list[InstanceRef]) -> None:
    from pydicom.pixels.decoders.base import get_decoder

    for ts in {pydicom.uid.UID(r.transfer_syntax_uid) for r in refs}:
        if ts.is_compressed:
            try:
                available = get_decoder(ts).is_available
            except NotImplementedError:
                available = False
            if not available:
                raise NotAcceptableError(
                    f"instances stored as {ts} cannot be decoded here; ask for transfer-syntax=*"
                )


@dataclass(frozen=True)
class _Piece:
    """Bytes ``[start, end)`` of a stored instance and the multipart framing around them."""

    ref: InstanceRef
    start: int
    end: int
    head: bytes  # the part header when this piece opens a part, else b""
    last: bool  # the part's closing CRLF follows this piece
    target: str | None = None  # transcode the whole instance to this transfer syntax


def _plan(
    refs: list[InstanceRef], target: str | None, boundary: str
) -> tuple[list[list[_Piece]], int | None]:
    """The body as batches of pieces of about :data:`READ_AHEAD` bytes, in order, and its
    length (``None`` when an instance is transcoded: its size is only known once done)."""
    batches: list[list[_Piece]] = []
    batch: list[_Piece] = []
    size = 0
    length: int | None = 0
    for ref in refs:
        if target is not None and ref.transfer_syntax_uid != target:
            head = part_header(boundary, f"{DICOM}; transfer-syntax={target}")
            pieces = [_Piece(ref, 0, ref.size, head, True, target)]
            length = None
        else:
            head = part_header(boundary, f"{DICOM}; transfer-syntax={ref.transfer_syntax_uid}")
            # Large instances go in CHUNK pieces so that no buffer is bigger than that.
            pieces = [
                _Piece(
                    ref, at, min(at + CHUNK, ref.size), b"" if at else head, at + CHUNK >= ref.size
                )
                for at in range(0, max(ref.size, 1), CHUNK)
            ]
            if length is not None:
                length += len(head) + ref.size + len(CRLF)
        for piece in pieces:
            batch.append(piece)
            size += piece.end - piece.start
            if size >= READ_AHEAD:
                batches.append(batch)
                batch, size = [], 0
    if batch:
        batches.append(batch)
    if length is not None:
        length += len(closing(boundary))
    return batches, length


async def _instance_parts(
    ctx: Context, first: list[memoryview], rest: list[list[_Piece]], boundary: str
) -> AsyncIterator[bytes | memoryview]:
    """The body: ``first`` (read already), then the ``rest`` of the batches, each read in
    a worker thread while the one before it is sent. Reading and sending overlap instead
    of taking turns, and no more than two batches (about 2 x READ_AHEAD) are held."""
    parts = first
    pending: asyncio.Future[list[memoryview]] | None = None
    try:
        for batch in rest:
            pending = asyncio.ensure_future(ctx.read(_read_batch, ctx, batch))
            for part in parts:
                yield part
            parts = await pending
        for part in parts:
            yield part
        yield closing(boundary)
    finally:
        # When the client went away or a read failed, a pending read finishes in its
        # thread and is dropped (batches share no state); its outcome is marked as seen.
        if pending is not None:
            pending.cancel()
            pending.add_done_callback(_discard)


def _discard(future: asyncio.Future[list[memoryview]]) -> None:
    if not future.cancelled():
        future.exception()


def _read_batch(ctx: Context, batch: list[_Piece]) -> list[memoryview]:
    return [_read_piece(ctx, piece) for piece in batch]


def _read_piece(ctx: Context, piece: _Piece) -> memoryview:
    """One body write: part header, instance bytes and delimiter in one buffer, the file
    read straight into it (no copy of the bytes after the read)."""
    if piece.target is not None:
        data = pixels.transcode(ctx.archive, piece.ref)
        return memoryview(piece.head + data + CRLF)
    tail = CRLF if piece.last else b""
    size = piece.end - piece.start
    buf = memoryview(bytearray(len(piece.head) + size + len(tail)))
    buf[: len(piece.head)] = piece.head
    _read_into(ctx, piece.ref, piece.start, buf[len(piece.head) : len(piece.head) + size])
    buf[len(buf) - len(tail) :] = tail
    return buf


def _read_into(ctx: Context, ref: InstanceRef, start: int, out: memoryview) -> None:
    """Fill ``out`` with the stored bytes of ``ref`` from ``start``.

    The stored size must be the indexed one: the response's length and framing were
    computed from it before the first byte went out.
    """
    storage = ctx.archive.storage
    key = ref.storage_key
    path = storage.local_path(key)
    if path is None:
        data = storage.get_range(key, start, start + len(out))
        if len(data) != len(out):
            raise StorageError(f"{key} is shorter than indexed ({ref.size} bytes)")
        out[:] = data
        return
    try:
        with open(path, "rb", buffering=0) as fh:
            if os.fstat(fh.fileno()).st_size != ref.size:
                raise StorageError(f"{key} is not the indexed size ({ref.size} bytes)")
            fh.seek(start)
            done = 0
            while done < len(out):
                n = fh.readinto(out[done:])
                if not n:
                    raise StorageError(f"{key} is shorter than indexed ({ref.size} bytes)")
                done += n
    except OSError as exc:
        raise StorageError(f"cannot read {key}: {exc.strerror or exc}") from exc


# -- metadata and bulk data ---------------------------------------------------------------


async def _metadata(
    ctx: Context, request: Request, study: str, series: str | None, sop: str | None
) -> Response:
    accept = parse_accept(request.headers.get("accept"))
    if not any(a.matches(DICOM_JSON) or a.media_type == "application/json" for a in accept):
        raise NotAcceptableError(f"metadata is available as {DICOM_JSON}")
    refs = await _refs(ctx, request, study, series, sop)
    root = ctx.root(request)
    body = await ctx.read(_metadata_all, ctx, refs, root)
    return Response(body, media_type=DICOM_JSON)


def _metadata_all(ctx: Context, refs: list[InstanceRef], root: str) -> bytes:
    out = []
    for ref in refs:
        url = instance_url(
            root, ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid
        )
        # Stored content never changes under its key (content-addressed), so the JSON
        # of an instance can be kept as long as the URL it was made for is the same.
        text = ctx.metadata_cache.get((ref.storage_key, url))
        if text is None:
            with ctx.archive.storage.open(ref.storage_key) as fh:
                text = json.dumps(metadata_json(fh, url))
            ctx.metadata_cache.put((ref.storage_key, url), text)
        out.append(text)
    return ("[" + ",".join(out) + "]").encode()


def metadata_json(fh: BinaryIO, url: str) -> dict[str, object]:
    """One instance in the DICOM JSON Model; top-level bulk data by BulkDataURI (F.2.6)."""
    ds = pydicom.dcmread(fh, defer_size=BULK_THRESHOLD)
    out: dict[str, object] = {}
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement):
            vr = raw.VR or _dictionary_vr(ds, tag)
            if vr in BULK_VRS and (raw.value is None or raw.length > BULK_THRESHOLD):
                out[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": f"{url}/bulkdata/{tag:08X}"}
                continue
        elem = ds[tag]
        if elem.tag.is_private and elem.VR == "UN":
            continue  # private data without its dictionary says nothing to a client
        # Nested bulk data is small in practice and goes inline (InlineBinary).
        out[f"{tag:08X}"] = elem.to_json_dict(None, BULK_THRESHOLD)
    return out


def _dictionary_vr(ds: pydicom.Dataset, tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    if vr == "OB or OW":
        compressed = pydicom.uid.UID(ds.file_meta.TransferSyntaxUID).is_compressed
        return "OW" if not compressed and int(ds.get("BitsAllocated", 8) or 8) > 8 else "OB"
    return vr.split(" or ")[0]


async def _bulkdata(ctx: Context, request: Request, ref: InstanceRef, tag_text: str) -> Response:
    try:
        tag = Tag(int(tag_text, 16))
    except ValueError as exc:
        raise NotFoundError(f"no bulk data {tag_text!r}") from exc
    if tag == pixels.PIXEL_DATA:
        count = await ctx.read(_frame_count, ctx, ref)
        return await _frames(ctx, request, ref, list(range(1, count + 1)))
    accept = parse_accept(request.headers.get("accept"))
    if not any(a.matches(OCTET) for a in part_ranges(accept, OCTET)):
        raise NotAcceptableError(f"bulk data is available as multipart/related; type={OCTET}")
    value = await ctx.read(_element_bytes, ctx, ref, tag)
    boundary = new_boundary()

    async def body() -> AsyncIterator[bytes]:
        yield part_header(boundary, OCTET) + value + b"\r\n" + closing(boundary)

    return multipart_response(body(), boundary, OCTET)


def _frame_count(ctx: Context, ref: InstanceRef) -> int:
    ds = ctx.archive.dataset(ref, stop_before_pixels=True)
    return pixels.frame_count(ds)


def _element_bytes(ctx: Context, ref: InstanceRef, tag: int) -> bytes:
    ds = ctx.archive.dataset(ref)
    elem = ds.get(tag)
    if elem is None or not isinstance(elem.value, bytes):
        raise NotFoundError(f"the instance has no bulk data element ({tag:08X})")
    return elem.value


# -- frames and rendered -----------------------------------------------------------------


def _frame_numbers(text: str) -> list[int]:
    """A frame list (PS3.18 8.3.3.1: comma-separated, 1-based)."""
    try:
        numbers = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise InvalidRequestError(f"invalid frame list {text!r}", hint="e.g. frames/1,3,5") from exc
    if not numbers:
        raise InvalidRequestError("empty frame list")
    return numbers


async def _frames(ctx: Context, request: Request, ref: InstanceRef, numbers: list[int]) -> Response:
    accept = parse_accept(request.headers.get("accept"))
    frames = await ctx.read(pixels.read_frames, ctx.archive, ref, numbers, accept)
    boundary = new_boundary()
    content_type = f"{frames.media_type}; transfer-syntax={frames.transfer_syntax}"

    async def body() -> AsyncIterator[bytes]:
        for part in frames.parts:
            yield part_header(boundary, content_type) + part + b"\r\n"
        yield closing(boundary)

    return multipart_response(body(), boundary, frames.media_type)


async def _rendered(
    ctx: Context,
    request: Request,
    ref: InstanceRef,
    frame: int,
    viewport: tuple[int, int] | None = None,
) -> Response:
    params = request.query_params
    quality = 90
    if params.get("quality"):
        text = params["quality"]
        if not text.isdigit() or not 1 <= int(text) <= 100:
            raise InvalidRequestError(f"quality must be 1..100, got {text!r}")
        quality = int(text)
    how = pixels.Rendering(
        image_format=_rendered_format(request.headers.get("accept")),
        window=pixels.Window.parse(params["window"]) if params.get("window") else None,
        quality=quality,
        viewport=(
            pixels.Rendering.parse_viewport(params["viewport"])
            if params.get("viewport")
            else viewport
        ),
    )
    data = await ctx.read(pixels.render, ctx.archive, ref, frame, how)
    return Response(data, media_type=f"image/{how.image_format}")


def _rendered_format(header: str | None) -> str:
    """PNG unless the client prefers JPEG (PS3.18 8.7.4: rendered media types)."""
    for item in parse_accept(header):
        if item.media_type in ("image/png", "image/*", "*/*"):
            return "png"
        if item.media_type in ("image/jpeg", "image/jpg"):
            return "jpeg"
    raise NotAcceptableError("rendered images are available as image/png or image/jpeg")
