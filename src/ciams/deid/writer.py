"""Fast serialization of de-identified datasets (PS3.10 file format, PS3.5 7.1.2).

Most elements of a de-identified instance are kept exactly as read.  For Explicit
VR Little Endian based transfer syntaxes this writer copies such raw elements
straight from the input bytes (tag, VR, length, value) and hands only the changed
elements, sequences and anything unusual to pydicom's own element writer, which
makes writing several times faster than :func:`pydicom.dcmwrite` while producing
the same bytes.  Other transfer syntaxes go through ``dcmwrite``.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom import Dataset, dcmwrite
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import (
    correct_ambiguous_vr,
    correct_ambiguous_vr_element,
    write_data_element,
    write_file_meta_info,
)

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_PIXEL_DATA = 0x7FE00010
_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2s2xI")


_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                       "TM", "UC", "UI", "UR", "UT"})


def _encode_text(value: object, vr: str) -> bytes | None:
    """ASCII string values encoded and padded (PS3.5 6.2); None -> let pydicom do it."""
    if value is None or value == "":
        return b""
    if type(value) is not str or not value.isascii():
        return None
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


def serialize_parts(ds: Dataset) -> tuple[bytes, bytes]:
    """``(header, pixel_value)``: the file without the Pixel Data value, and that value.

    The file is ``header + pixel_value``; the split lets the leak guard scan the
    header without copying the pixels.
    """
    meta = ds.file_meta
    syntax = meta.TransferSyntaxUID
    if syntax.is_implicit_VR or not syntax.is_little_endian or syntax.is_deflated:
        buf = BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        return buf.getvalue(), b""
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = False
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    parts = [out.getvalue()]
    encodings = ds._character_set
    pixel = b""
    for tag in sorted(ds.keys()):
        elem = ds.get_item(tag)
        if (
            isinstance(elem, RawDataElement)
            and elem.VR is not None
            and not elem.is_implicit_VR
            and elem.is_little_endian
            and elem.length != 0xFFFFFFFF
            and elem.VR != "SQ"
            and isinstance(elem.value, bytes)
        ):
            value = elem.value
            vr = elem.VR.encode()
            if len(value) % 2:
                value += b"\0" if vr in (b"OB", b"UI", b"UN") else b" "
            t = int(tag)
            if vr in _LONG_VRS:
                head = _LONG.pack(t >> 16, t & 0xFFFF, vr, len(value))
            elif len(value) > 0xFFFF:
                head = _LONG.pack(t >> 16, t & 0xFFFF, b"UN", len(value))
            else:
                head = _SHORT.pack(t >> 16, t & 0xFFFF, vr, len(value))
            if t == _PIXEL_DATA:
                parts.append(head)
                pixel = value
                continue
            parts.append(head)
            parts.append(value)
            continue
        if not isinstance(elem, RawDataElement) and elem.VR in _TEXT_VRS:
            raw = _encode_text(elem.value, elem.VR)
            if raw is not None:
                t = int(tag)
                parts.append(_SHORT.pack(t >> 16, t & 0xFFFF, elem.VR.encode(), len(raw))
                             if elem.VR not in ("UT", "UC", "UR")
                             else _LONG.pack(t >> 16, t & 0xFFFF, elem.VR.encode(), len(raw)))
                parts.append(raw)
                continue
        buf = DicomBytesIO()
        buf.is_little_endian = True
        buf.is_implicit_VR = False
        item = ds[tag] if isinstance(elem, RawDataElement) else elem
        if item.VR and " or " in item.VR:
            item = correct_ambiguous_vr_element(item, ds, True)
        if item.VR == "SQ":
            for child in item.value:  # nested ambiguous VRs (LUT data, ...)
                correct_ambiguous_vr(child, True)
        write_data_element(buf, item, encodings)
        parts.append(buf.getvalue())
    return b"".join(parts), pixel


def serialize(ds: Dataset) -> bytes:
    """Write ``ds`` (with its file meta) as a DICOM file into bytes."""
    header, pixel = serialize_parts(ds)
    return header + pixel if pixel else header
