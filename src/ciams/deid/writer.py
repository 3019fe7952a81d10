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
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element

from ciams.deid.encoding import (
    META_ELEMENTS,
    PREAMBLE,
    encode_text,
    file_meta_bytes,
)
from ciams.deid.encoding import (
    TEXT_VRS as _TEXT_VRS,
)

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_PIXEL_DATA = 0x7FE00010
_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2s2xI")
_ITEM = struct.Struct("<HHI")
_PREAMBLE = PREAMBLE


_encode_text = encode_text


def _file_meta(meta: Dataset) -> bytes:
    """File Meta Information (PS3.10 7.1) with its group length."""
    values = {}
    for elem_no, _vr in META_ELEMENTS:
        tag = 0x00020000 | elem_no
        if tag in meta:
            values[elem_no] = meta[tag].value
    return file_meta_bytes(values)


def _encode(ds: Dataset, encodings: list[str], top: bool) -> tuple[list[bytes], bytes]:
    """Explicit VR Little Endian encoding of ``ds`` (parts, pixel value at top level)."""
    parts: list[bytes] = []
    pixel = b""
    for tag in sorted(ds.keys()):
        t = int(tag)
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
            if vr in _LONG_VRS:
                head = _LONG.pack(t >> 16, t & 0xFFFF, vr, len(value))
            elif len(value) > 0xFFFF:
                head = _LONG.pack(t >> 16, t & 0xFFFF, b"UN", len(value))
            else:
                head = _SHORT.pack(t >> 16, t & 0xFFFF, vr, len(value))
            parts.append(head)
            if top and t == _PIXEL_DATA:
                pixel = value
            else:
                parts.append(value)
            continue
        item = ds[tag] if isinstance(elem, RawDataElement) else elem
        vr_s = item.VR
        if vr_s in _TEXT_VRS:
            raw = _encode_text(item.value, vr_s)
            if raw is not None:
                if vr_s in ("UT", "UC", "UR"):
                    parts.append(_LONG.pack(t >> 16, t & 0xFFFF, vr_s.encode(), len(raw)))
                else:
                    parts.append(_SHORT.pack(t >> 16, t & 0xFFFF, vr_s.encode(), len(raw)))
                parts.append(raw)
                continue
        if vr_s == "SQ":
            items = []
            for child in item.value:
                child_parts, _ = _encode(child, encodings, False)
                body = b"".join(child_parts)
                items.append(_ITEM.pack(0xFFFE, 0xE000, len(body)) + body)
            seq = b"".join(items)
            parts.append(_LONG.pack(t >> 16, t & 0xFFFF, b"SQ", len(seq)))
            parts.append(seq)
            continue
        out_elem: DataElement | RawDataElement = item
        if vr_s and " or " in vr_s:
            out_elem = correct_ambiguous_vr_element(item, ds, True)
        buf = DicomBytesIO()
        buf.is_little_endian = True
        buf.is_implicit_VR = False
        write_data_element(buf, out_elem, encodings)
        parts.append(buf.getvalue())
    return parts, pixel


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
    charset = ds._character_set
    encodings = [charset] if isinstance(charset, str) else list(charset)
    parts, pixel = _encode(ds, encodings, True)
    return _PREAMBLE + _file_meta(meta) + b"".join(parts), pixel


def serialize(ds: Dataset) -> bytes:
    """Write ``ds`` (with its file meta) as a DICOM file into bytes."""
    header, pixel = serialize_parts(ds)
    return header + pixel if pixel else header
