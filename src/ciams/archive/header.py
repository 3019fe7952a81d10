"""A scanner of undecoded Part 10 bytes for what ingest needs, without a pydicom Dataset.

:func:`scan` walks every element of a file (so damage anywhere is noticed) and keeps
the value positions of the few top-level attributes that ingest reads.  It follows
the way ``pydicom.dcmread`` reads a file wherever both could differ, and gives up
(returns ``None``) on anything it does not know to read the same way: the caller
then parses with pydicom, which reads the odd file or says what is wrong with it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom._uid_dict import UID_dictionary
from pydicom.charset import STAND_ALONE_ENCODINGS, python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)

PIXEL_DATA = 0x7FE00010
SPECIFIC_CHARACTER_SET = 0x00080005
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
TRANSFER_SYNTAX_UID = 0x00020010
UNDEFINED = -1
"""Value length recorded for undefined-length (encapsulated) Pixel Data."""

# Tag -> keyword of the top-level attributes ingest reads (required UIDs, character
# set, index columns, image description).
WANTED: dict[int, str] = {
    0x00080005: "SpecificCharacterSet",
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate",
    0x00080021: "SeriesDate",
    0x00080030: "StudyTime",
    0x00080031: "SeriesTime",
    0x00080050: "AccessionNumber",
    0x00080060: "Modality",
    0x00080090: "ReferringPhysicianName",
    0x00081030: "StudyDescription",
    0x0008103E: "SeriesDescription",
    0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x00100021: "IssuerOfPatientID",
    0x00100030: "PatientBirthDate",
    0x00100040: "PatientSex",
    0x00180015: "BodyPartExamined",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200010: "StudyID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
    0x00280002: "SamplesPerPixel",
    0x00280008: "NumberOfFrames",
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280100: "BitsAllocated",
    PIXEL_DATA: "PixelData",
}
TAGS: dict[str, int] = {keyword: tag for tag, keyword in WANTED.items()}
_WANTED = frozenset(WANTED)

_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHI")  # also the header of items and delimiters
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT"}
    | {b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
# Explicit VR -> element header size: one lookup both checks the VR and sizes it.
_HEADER_SIZE = {vr: 12 for vr in _LONG_VRS} | {vr: 8 for vr in _SHORT_VRS}
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _encapsulated_syntaxes() -> frozenset[str]:
    """Registered compressed transfer syntaxes whose data set pydicom reads as plain
    Explicit VR Little Endian.  Deflated ones (also the JPIP "Deflate" ones, which
    pydicom does not inflate) and non-standard ones are left to pydicom."""
    out = set()
    for value, entry in UID_dictionary.items():
        uid = UID(value)
        if (
            entry[1] == "Transfer Syntax"
            and value.startswith("1.2.840.10008.1.2.")
            and uid.is_compressed
            and uid.is_little_endian
            and not uid.is_implicit_VR
            and not uid.is_deflated
            and "Deflate" not in entry[0]
            and value not in PrivateTransferSyntaxes
        ):
            out.add(value)
    return frozenset(out)


ENCAPSULATED_SYNTAXES = _encapsulated_syntaxes()


@dataclass(frozen=True, slots=True)
class Header:
    """Where the wanted attributes of one file are: ``elements`` maps a tag to
    ``(VR, value offset, value length)``, the VR being ``b""`` for Implicit VR and
    the length :data:`UNDEFINED` for encapsulated Pixel Data."""

    data: bytes | bytearray = field(repr=False)
    transfer_syntax_uid: str
    implicit: bool
    encapsulated: bool
    media_storage_sop_instance_uid: bytes | None
    elements: dict[int, tuple[bytes, int, int]]

    def raw(self, tag: int) -> bytes | None:
        """The undecoded value of a wanted attribute, None when absent."""
        found = self.elements.get(tag)
        if found is None:
            return None
        _vr, start, length = found
        return bytes(self.data[start : start + length])

    def has_vr(self, tag: int, vr: bytes) -> bool:
        """Whether the attribute is present and read with ``vr`` (Implicit VR: the
        dictionary VR, which the caller knows)."""
        found = self.elements.get(tag)
        return found is not None and (self.implicit or found[0] == vr)

    def uid(self, tag: int) -> str | None:
        """A UI value as pydicom gives it (trailing NUL and spaces dropped, then
        stripped), None when absent, not read as UI, or multi-valued."""
        if not self.has_vr(tag, b"UI"):
            return None
        raw = self.raw(tag)
        return None if raw is None else uid_text(raw)

    def us(self, tag: int) -> int | None:
        """A single US value, None unless it is exactly one binary US."""
        found = self.elements.get(tag)
        if found is None or found[2] != 2 or not (self.implicit or found[0] == b"US"):
            return None
        return int(_U16.unpack_from(self.data, found[1])[0])

    def plain_character_set(self) -> bool:
        """Whether pydicom reads Specific Character Set without a correction or a
        warning (absent, or only values it knows as written)."""
        raw = self.raw(SPECIFIC_CHARACTER_SET)
        if raw is None:
            return True
        values = raw.decode("latin-1").rstrip(" \x00").split("\\")
        if len(values) == 1:
            return not values[0] or values[0] in python_encoding
        first, rest = values[0], values[1:]
        return (
            not first or (first in python_encoding and first not in STAND_ALONE_ENCODINGS)
        ) and all(v in python_encoding and v not in STAND_ALONE_ENCODINGS for v in rest)


def uid_text(raw: bytes) -> str | None:
    """pydicom's reading of a UI value (``rstrip("\\0 ")`` then ``strip()``); None when
    multi-valued, which pydicom turns into a list."""
    value = raw.decode("latin-1").rstrip("\x00 ")
    if "\\" in value:
        return None
    return value.strip()


def scan(data: bytes | bytearray) -> Header | None:
    """The wanted attributes of a Part 10 file, or None when pydicom must read it."""
    size = len(data)
    if size < 144 or data[128:132] != b"DICM":
        return None
    # pydicom converts the first meta element while reading; the group length is the
    # only one known to convert cleanly, so any other start is left to pydicom.
    if data[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        return None
    ts_raw: bytes | None = None
    media_sop: bytes | None = None
    pos = 144
    # The meta group ends where group 0002 ends, whatever its group length says.
    while pos + 8 <= size:
        group, elem, vr, length = _EXPLICIT.unpack_from(data, pos)
        if group != 2:
            break
        if vr in _LONG_VRS:
            if pos + 12 > size:
                return None
            (length,) = _U32.unpack_from(data, pos + 8)
            start = pos + 12
        elif vr in _SHORT_VRS:
            start = pos + 8
        else:
            return None
        pos = start + length
        if pos > size:
            return None
        if elem == 0x0010:
            if vr != b"UI":
                return None
            ts_raw = bytes(data[start:pos])
        elif elem == 0x0003:
            if vr != b"UI":
                return None
            media_sop = bytes(data[start:pos])
    if ts_raw is None or pos + 8 > size:
        return None
    ts = uid_text(ts_raw)
    if ts == ImplicitVRLittleEndian:
        implicit, encapsulated = True, False
    elif ts == ExplicitVRLittleEndian:
        implicit, encapsulated = False, False
    elif ts in ENCAPSULATED_SYNTAXES:
        implicit, encapsulated = False, True
    else:
        return None
    # pydicom reads a group 0000 command set in Implicit VR whatever the syntax.
    if data[pos] == 0 and data[pos + 1] == 0:
        return None
    found: dict[int, tuple[bytes, int, int]] = {}
    if implicit:
        # pydicom switches to Explicit VR when the first element looks explicit.
        if 0x41 <= data[pos + 4] <= 0x5A and 0x41 <= data[pos + 5] <= 0x5A:
            return None
        end = _implicit(data, pos, size, found, False)
    else:
        end = _explicit(data, pos, size, found, False, encapsulated)
    if end != size:
        return None
    return Header(data, ts, implicit, encapsulated, media_sop, found)


def _explicit(
    buf: bytes | bytearray,
    pos: int,
    end: int,
    found: dict[int, tuple[bytes, int, int]] | None,
    delimited: bool,
    encapsulated: bool = False,
) -> int:
    """Walk Explicit VR Little Endian elements from ``pos`` to ``end`` (or, when
    ``delimited``, to an Item Delimitation Item); the position after them, -1 when
    anything is unexpected.  ``found`` collects the wanted tags (top level only)."""
    unpack = _EXPLICIT.unpack_from
    u32 = _U32.unpack_from
    wanted = _WANTED
    header_size = _HEADER_SIZE
    while pos + 8 <= end:
        group, elem, vr, length = unpack(buf, pos)
        if group == 0xFFFE:
            # pydicom ends a data set at any Item Delimitation Item; only the one that
            # closes an undefined-length item is expected.
            if delimited and elem == 0xE00D and vr == b"\x00\x00" and length == 0:
                return pos + 8
            return -1
        size = header_size.get(vr)
        if size is None:
            return -1
        if size == 12:
            if pos + 12 > end:
                return -1
            (length,) = u32(buf, pos + 8)
            start = pos + 12
            if length == _UNDEFINED_LENGTH:
                tag = group << 16 | elem
                if found is not None and tag == PIXEL_DATA:
                    if not encapsulated or vr not in (b"OB", b"OW"):
                        return -1
                    pos = _fragments(buf, start, end)
                    found[tag] = (vr, start, UNDEFINED)
                elif vr == b"SQ" and (found is None or tag not in wanted):
                    pos = _sequence(buf, start, end, False)
                else:
                    # UN of undefined length is Implicit VR inside (PS3.5 6.2.2) and
                    # other VRs are read by searching for a delimiter: pydicom's job.
                    return -1
                if pos < 0:
                    return -1
                continue
        else:
            start = pos + 8
        pos = start + length
        if pos > end:
            return -1
        if found is not None:
            tag = group << 16 | elem
            if tag in wanted:
                found[tag] = (vr, start, length)
    if delimited or pos != end:
        return -1
    return pos


def _implicit(
    buf: bytes | bytearray,
    pos: int,
    end: int,
    found: dict[int, tuple[bytes, int, int]] | None,
    delimited: bool,
) -> int:
    """:func:`_explicit` for Implicit VR Little Endian elements."""
    unpack = _IMPLICIT.unpack_from
    wanted = _WANTED
    while pos + 8 <= end:
        group, elem, length = unpack(buf, pos)
        if group == 0xFFFE:
            if delimited and elem == 0xE00D and length == 0:
                return pos + 8
            return -1
        start = pos + 8
        if length == _UNDEFINED_LENGTH:
            tag = group << 16 | elem
            if (found is not None and tag in wanted) or not _implicit_sequence(buf, tag, start):
                return -1
            pos = _sequence(buf, start, end, True)
            if pos < 0:
                return -1
            continue
        pos = start + length
        if pos > end:
            return -1
        if found is not None:
            tag = group << 16 | elem
            if tag in wanted:
                found[tag] = (b"", start, length)
    if delimited or pos != end:
        return -1
    return pos


def _implicit_sequence(buf: bytes | bytearray, tag: int, start: int) -> bool:
    """Whether pydicom parses an undefined-length Implicit VR element as a sequence:
    a dictionary SQ, or an unknown tag whose value starts with an item."""
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return buf[start : start + 4] == _ITEM_TAG


def _items(buf: bytes | bytearray, pos: int, end: int, item: Callable[[int, int], int]) -> int:
    """Position after the Sequence Delimitation Item of the items starting at ``pos``,
    -1 when broken; ``item(value position, length)`` reads each item's value and
    returns the position after it (-1 when broken)."""
    unpack = _IMPLICIT.unpack_from
    while pos + 8 <= end:
        group, elem, length = unpack(buf, pos)
        pos += 8
        if group != 0xFFFE:
            return -1
        if elem == 0xE0DD:
            return pos if length == 0 else -1
        if elem != 0xE000:
            return -1
        pos = item(pos, length)
        if pos < 0:
            return -1
    return -1


def _sequence(buf: bytes | bytearray, pos: int, end: int, implicit: bool) -> int:
    """Position after the Sequence Delimitation Item of an undefined-length sequence
    whose items start at ``pos``, -1 when broken.  Item contents are walked too, as
    pydicom parses them: a defined-length item must end exactly at its length."""
    walk = _implicit if implicit else _explicit

    def item(start: int, length: int) -> int:
        if length == _UNDEFINED_LENGTH:
            return walk(buf, start, end, None, True)
        item_end = start + length
        if item_end > end or walk(buf, start, item_end, None, False) != item_end:
            return -1
        return item_end

    return _items(buf, pos, end, item)


def _fragments(buf: bytes | bytearray, pos: int, end: int) -> int:
    """Position after the Sequence Delimitation Item of encapsulated Pixel Data, read
    item by item as pydicom does first; -1 where pydicom would fall back to a byte
    search for the delimiter."""
    return _items(buf, pos, end, lambda start, length: start + length)
