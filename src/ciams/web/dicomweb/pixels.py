"""Pixel work behind WADO-RS (PS3.18 10.4): frames (media types of PS3.18 8.7.3.3),
rendered images (PS3.18 8.3.5.1) and transcoding of whole instances (8.7.3.5).

Every function here is blocking (file reads, decoding); callers run them in a worker
thread. Decoding goes through pydicom's pixel backends (pylibjpeg, gdcm), windowing
through pydicom's Modality/VOI LUT functions, image encoding through Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import get_frame
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_windowing,
)
from pydicom.pixels.utils import get_expected_length, get_nr_frames, pack_bits, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from ciams.archive import Archive, InstanceRef
from ciams.errors import InvalidRequestError, NotAcceptableError, NotFoundError
from ciams.web.dicomweb.media import (
    EXPLICIT_VR_LE,
    FRAME_MEDIA_TYPES,
    OCTET,
    Accepted,
    part_ranges,
)

PIXEL_DATA = 0x7FE00010
_NATIVE_LE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}
_VOI_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}


@dataclass(frozen=True)
class Frames:
    """Frames ready to send: each part's bytes, their media type and transfer syntax."""

    parts: list[bytes]
    media_type: str
    transfer_syntax: str


def _open_pixels(fh: BinaryIO) -> tuple[FileDataset, int | None]:
    """The header, and the file offset of the Pixel Data value.

    Only the header is parsed; ``dcmread`` leaves the file at the Pixel Data element,
    so frames are then read by seeking, not by loading all pixels. The offset is None
    when the value is not at a plain file position (deflated or big endian data).
    """
    ds = pydicom.dcmread(fh, stop_before_pixels=True)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if ts == DeflatedExplicitVRLittleEndian or not ts.is_little_endian:
        if "Rows" not in ds:
            raise NotFoundError("the instance has no pixel data")
        return ds, None
    start = fh.tell()
    if fh.read(4) != b"\xe0\x7f\x10\x00":  # (7FE0,0010) little endian
        raise NotFoundError("the instance has no pixel data")
    # Implicit VR: tag + 4-byte length; explicit VR (OB/OW): tag + VR + 2 reserved + length.
    return ds, start + (8 if ts.is_implicit_VR else 12)


def frame_count(ds: Dataset) -> int:
    return max(1, get_nr_frames(ds, warn=False))


def _check_numbers(numbers: list[int], count: int) -> None:
    bad = [n for n in numbers if n < 1 or n > count]
    if bad:
        raise NotFoundError(
            f"frame {bad[0]} does not exist; the instance has {count} frame(s) (numbered from 1)"
        )


def _mode(ts: UID, accept: list[Accepted]) -> tuple[str, str]:
    """How to send frames of ``ts``: ('stored'|'raw'|'decoded', media type)."""
    compressed_type = FRAME_MEDIA_TYPES.get(ts, "")
    for item in part_ranges(accept, OCTET):
        want = item.transfer_syntax
        if ts.is_compressed:
            specific = compressed_type and item.media_type != "*/*"
            if specific and item.matches(compressed_type) and want in ("", "*", ts):
                return "stored", compressed_type
            if item.matches(OCTET):
                if want in ("*", ts):
                    return "stored", OCTET
                if want in ("", EXPLICIT_VR_LE):
                    return "decoded", OCTET
        elif item.matches(OCTET) and want in ("", "*", EXPLICIT_VR_LE, ts):
            return ("raw" if ts in _NATIVE_LE else "decoded"), OCTET
    raise NotAcceptableError(
        f"frames of this instance (transfer syntax {ts}) are available as "
        f"{OCTET}" + (f" or {compressed_type}" if compressed_type else "")
    )


def read_frames(
    archive: Archive, ref: InstanceRef, numbers: list[int], accept: list[Accepted]
) -> Frames:
    """The requested frames (1-based) of one instance, negotiated against ``accept``."""
    with archive.storage.open(ref.storage_key) as fh:
        ds, offset = _open_pixels(fh)
        ts = UID(ds.file_meta.TransferSyntaxUID)
        count = frame_count(ds)
        _check_numbers(numbers, count)
        mode, media_type = _mode(ts, accept)
        if mode == "stored" and offset is not None:
            fh.seek(offset)
            parts = [get_frame(fh, n - 1, number_of_frames=count) for n in numbers]
            out_ts = str(ts)
        elif mode == "raw" and offset is not None and int(ds.BitsAllocated) % 8 == 0:
            size = get_expected_length(ds, "bytes") // count
            parts = []
            for n in numbers:
                fh.seek(offset + (n - 1) * size)
                parts.append(fh.read(size))
            out_ts = EXPLICIT_VR_LE
        else:
            parts = [_decoded(fh, ds, n) for n in numbers]
            out_ts = EXPLICIT_VR_LE
    return Frames(parts=parts, media_type=media_type, transfer_syntax=out_ts)


def _decoded(fh: BinaryIO, ds: Dataset, number: int) -> bytes:
    fh.seek(0)
    return _native_le(pixel_array(fh, index=number - 1), ds)


def _native_le(arr: np.ndarray, ds: Dataset) -> bytes:
    """Decoded pixels as native little endian bytes (colour by pixel, 1-bit packed)."""
    if int(ds.BitsAllocated) == 1:
        return pack_bits(arr)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


# Binary values pydicom keeps as raw bytes: their words must be swapped out of big endian.
_WORD_VRS = {"OW": ">u2", "OL": ">u4", "OF": ">f4", "OD": ">f8", "OV": ">u8"}


def transcode(archive: Archive, ref: InstanceRef) -> bytes:
    """The instance in Explicit VR Little Endian (PS3.18 8.7.3.5), decoding if compressed."""
    with archive.storage.open(ref.storage_key) as fh:
        ds = pydicom.dcmread(fh)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if ts.is_compressed:
        ds.decompress()
    elif ts == ExplicitVRBigEndian:
        for elem in ds.iterall():
            word = _WORD_VRS.get(elem.VR)
            if word and isinstance(elem.value, bytes) and elem.tag != 0x7FE00010:
                elem.value = (
                    np.frombuffer(elem.value, word).astype(word.replace(">", "<")).tobytes()
                )
        if "PixelData" in ds:
            ds.PixelData = _native_le(ds.pixel_array, ds)
            ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
            if int(ds.get("SamplesPerPixel", 1)) > 1:
                ds.PlanarConfiguration = 0  # pixel_array is colour by pixel
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = ds.preamble or b"\x00" * 128
    buf = BytesIO()
    # force_encoding lets a big endian data set be written little endian; pydicom takes it
    # only without enforce_file_format, hence the preamble set above.
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    return buf.getvalue()


# -- rendering --------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """``window=center,width,function`` (PS3.18 8.3.5.1.3)."""

    center: float
    width: float
    function: str = "LINEAR"

    @classmethod
    def parse(cls, value: str) -> Window:
        parts = [p.strip() for p in value.split(",")]
        if len(parts) not in (2, 3):
            raise InvalidRequestError(
                f"window must be center,width[,function], got {value!r}",
                hint="e.g. window=40,400,linear",
            )
        try:
            center, width = float(parts[0]), float(parts[1])
        except ValueError as exc:
            raise InvalidRequestError(
                f"window center and width must be numbers: {value!r}"
            ) from exc
        function = _VOI_FUNCTIONS.get(parts[2].lower() if len(parts) == 3 else "linear")
        if function is None:
            raise InvalidRequestError(
                f"unknown window function {parts[2]!r}; use linear, linear-exact or sigmoid"
            )
        if width <= 0 or (function == "LINEAR" and width < 1):
            raise InvalidRequestError(f"window width must be positive (>= 1 for linear): {value!r}")
        return cls(center, width, function)


@dataclass(frozen=True)
class Rendering:
    """How to render: the rendered-resource query parameters (PS3.18 8.3.5.1)."""

    image_format: str = "png"  # or "jpeg"
    window: Window | None = None
    quality: int = 90
    viewport: tuple[int, int] | None = None  # fit within (width, height)

    @staticmethod
    def parse_viewport(value: str) -> tuple[int, int]:
        """``viewport=vw,vh`` (PS3.18 8.3.5.1.2); the source-region form is not supported."""
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) <= 8192 for p in parts):
            raise InvalidRequestError(
                f"viewport must be width,height in pixels (1..8192), got {value!r}"
            )
        return int(parts[0]), int(parts[1])


def render(archive: Archive, ref: InstanceRef, frame: int, how: Rendering) -> bytes:
    """One frame as an 8-bit PNG or JPEG (PS3.18 8.3.5.1: rendered media types)."""
    with archive.storage.open(ref.storage_key) as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        if "Rows" not in ds:
            raise NotFoundError("the instance has no image to render")
        _check_numbers([frame], frame_count(ds))
        fh.seek(0)
        arr = pixel_array(fh, index=frame - 1)
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        image = Image.fromarray(_color(arr, ds, 16 if arr.dtype != np.uint8 else 8))
    elif int(ds.get("SamplesPerPixel", 1)) == 1:
        image = Image.fromarray(_grayscale(arr, ds, how.window))
    else:
        image = Image.fromarray(_color(arr, ds))
    if how.viewport is not None:
        image = ImageOps.contain(image, how.viewport)
    buf = BytesIO()
    if how.image_format == "jpeg":
        image.save(buf, "JPEG", quality=how.quality)
    else:
        image.save(buf, "PNG")
    return buf.getvalue()


def _grayscale(arr: NDArray[np.generic], ds: Dataset, window: Window | None) -> NDArray[np.uint8]:
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if window is None:
        window = _default_window(ds, values)
    # A VOI dataset whose output range is 0..255, so windowing yields display values.
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.BitsStored = 8
    voi.PixelRepresentation = 0
    voi.WindowCenter = window.center
    voi.WindowWidth = window.width
    voi.VOILUTFunction = window.function
    out: NDArray[np.float64] = apply_windowing(values, voi)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        out = 255.0 - out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _default_window(ds: Dataset, values: NDArray[np.float64]) -> Window:
    """The instance's first Window Center/Width, else the full range of the values."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = center[0] if isinstance(center, list | pydicom.multival.MultiValue) else center
        w = width[0] if isinstance(width, list | pydicom.multival.MultiValue) else width
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if function not in _VOI_FUNCTIONS.values():
            function = "LINEAR"
        if float(w) >= 1:
            return Window(float(c), float(w), function)
    low, high = float(values.min()), float(values.max())
    return Window((low + high) / 2, max(high - low, 1.0), "LINEAR_EXACT")


def _color(arr: NDArray[np.generic], ds: Dataset, bits: int = 0) -> NDArray[np.uint8]:
    # pixel_array has already converted YBR to RGB; only the bit depth needs scaling.
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr, dtype=np.uint8)
    bits = bits or int(ds.get("BitsStored", 8) or 8)
    shifted = np.right_shift(arr.astype(np.uint32), max(bits - 8, 0))
    return np.asarray(np.minimum(shifted, 255), dtype=np.uint8)
