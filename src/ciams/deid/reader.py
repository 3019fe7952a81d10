"""Fast reading of Explicit VR Little Endian files into raw elements (PS3.10, PS3.5 7.1.2).

The engine keeps most elements untouched, so it does not need them decoded.  For
files in an Explicit VR Little Endian based transfer syntax whose top-level
elements all have defined lengths (the common case for images from scanners and
PACS), this reader splits the bytes into pydicom ``RawDataElement`` tuples with
``struct`` only; pydicom decodes an element (sequences included) when it is first
accessed, exactly as for its own raw elements.  Anything else — implicit VR, big
endian, undefined lengths at the top level, no file meta, odd bytes — goes to
:func:`pydicom.dcmread`, so the result is always the same dataset pydicom would read.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import cast

from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_VALID_VRS = _LONG_VRS | frozenset(
    {
        b"AE",
        b"AS",
        b"AT",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"FD",
        b"FL",
        b"IS",
        b"LO",
        b"LT",
        b"PN",
        b"SH",
        b"SL",
        b"SS",
        b"ST",
        b"TM",
        b"UI",
        b"UL",
        b"US",
    }
)
_HEAD = struct.Struct("<HH2sH")
_U32 = struct.Struct("<I")
_CHARSET = 0x00080005


def _split(
    buf: bytes, pos: int, end: int, group_limit: int | None
) -> tuple[dict[BaseTag, RawDataElement], int] | None:
    elements: dict[BaseTag, RawDataElement] = {}
    while pos < end:
        if end - pos < 8:
            return None
        group, elem, vr, short = _HEAD.unpack_from(buf, pos)
        if group_limit is not None and group != group_limit:
            break
        if vr not in _VALID_VRS:
            return None
        if vr in _LONG_VRS:
            if end - pos < 12:
                return None
            length = _U32.unpack_from(buf, pos + 8)[0]
            start = pos + 12
        else:
            length = short
            start = pos + 8
        if length == 0xFFFFFFFF or start + length > end:
            return None
        tag = BaseTag(group << 16 | elem)
        elements[tag] = RawDataElement(
            tag, vr.decode(), length, buf[start : start + length], start, False, True
        )
        pos = start + length
    return elements, pos


def read_fast(data: bytes) -> Dataset:
    """Read a DICOM file from bytes (fast path when possible, else ``dcmread``)."""
    ds = _read_explicit_le(data)
    if ds is None:
        return dcmread(BytesIO(data), force=True)
    return ds


def _read_explicit_le(data: bytes) -> Dataset | None:
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    meta_split = _split(data, 132, len(data), 0x0002)
    if meta_split is None:
        return None
    meta_elems, pos = meta_split
    syntax_elem = meta_elems.get(BaseTag(0x00020010))
    if syntax_elem is None or syntax_elem.value is None:
        return None
    syntax = UID(syntax_elem.value.rstrip(b"\0 ").decode("ascii", "replace"))
    if syntax.is_implicit_VR or not syntax.is_little_endian or syntax.is_deflated:
        return None
    body = _split(data, pos, len(data), None)
    if body is None:
        return None
    elements, _ = body
    meta = FileMetaDataset(cast("dict[BaseTag, DataElement | RawDataElement]", meta_elems))
    ds = FileDataset(
        "",
        Dataset(cast("dict[BaseTag, DataElement | RawDataElement]", elements)),
        preamble=data[:128],
        file_meta=meta,
        is_implicit_VR=False,
        is_little_endian=True,
    )
    charset = elements.get(BaseTag(_CHARSET))
    if charset is not None:
        ds.set_original_encoding(False, True, ds._character_set)
    else:
        ds.set_original_encoding(False, True)
    return ds
