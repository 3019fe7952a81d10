"""WADO-RS: Retrieve Transaction (PS3.18 10.4) for instances, metadata, bulk data, frames
and rendered images.

Instances are streamed from the storage area as stored, in large chunks, without
parsing (PS3.18 8.7.3.5.1, ``transfer-syntax=*``); only a request for Explicit VR Little
Endian of another transfer syntax decodes and re-encodes. Metadata (PS3.18 10.4.1.2,
Annex F) refers to bulk data elements, Pixel Data included, by BulkDataURI.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from typing import BinaryIO

import pydicom
from fastapi import APIRouter, Request
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from starlette.responses import Response

from ciams.archive import InstanceRef
from ciams.errors import InvalidRequestError, NotAcceptableError, NotFoundError
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

CHUNK = 4 * 1024 * 1024
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
    return multipart_response(_instance_parts(ctx, refs, target, boundary), boundary, DICOM)


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


async def _instance_parts(
    ctx: Context, refs: list[InstanceRef], target: str | None, boundary: str
) -> AsyncIterator[bytes]:
    for ref in refs:
        if target is not None and ref.transfer_syntax_uid != target:
            data = await ctx.read(pixels.transcode, ctx.archive, ref)
            yield part_header(boundary, f"{DICOM}; transfer-syntax={target}") + data + b"\r\n"
            continue
        head = part_header(boundary, f"{DICOM}; transfer-syntax={ref.transfer_syntax_uid}")
        if ref.size <= CHUNK:
            # One thread hop per small instance: header, bytes and delimiter in one write.
            data = await ctx.read(ctx.archive.read, ref)
            yield head + data + b"\r\n"
            continue
        yield head
        fh = await ctx.read(ctx.archive.storage.open, ref.storage_key)
        try:
            while chunk := await ctx.read(fh.read, CHUNK):
                yield chunk
        finally:
            fh.close()
        yield b"\r\n"
    yield closing(boundary)


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
