"""Explicit VR Little Endian encoding helpers without pydicom (PS3.5 7.1.2, PS3.10 7.1).

Shared by :mod:`ciams.deid.writer` (dataset path) and :mod:`ciams.deid.fastpath`
(byte path), so both produce the same bytes; importing this module is cheap, which
keeps ``ciams deid`` quick to start.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

PREAMBLE = b"\0" * 128 + b"DICM"

#: VRs whose values are character strings (PS3.5 6.2)
TEXT_VRS = frozenset(
    {
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    }
)
#: Implementation Class UID of the CIAMS de-identifier (PS3.7 D.3.3.2), under 2.25.
IMPLEMENTATION_UID = "2.25.147151595034982586039724809798337388800"
IMPLEMENTATION_VERSION = "CIAMS_DEID_1"
SHORT = struct.Struct("<HH2sH")
LONG = struct.Struct("<HH2s2xI")
ITEM = struct.Struct("<HHI")
#: File meta elements written, in order, with their VR.
META_ELEMENTS = ((2, "UI"), (3, "UI"), (0x10, "UI"), (0x12, "UI"), (0x13, "SH"), (0x16, "AE"))


def encode_text(value: object, vr: str) -> bytes | None:
    """ASCII string values encoded and padded (PS3.5 6.2); None when not plain ASCII."""
    if value is None or value == "":
        return b""
    if not isinstance(value, str) or not value.isascii():
        return None
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


def file_meta_bytes(values: Mapping[int, str]) -> bytes:
    """File Meta Information with its group length; ``values`` maps element number to
    value for (0002,0002), (0002,0003), (0002,0010), (0002,0012), (0002,0013), (0002,0016)."""
    body = [SHORT.pack(2, 1, b"OB", 0)[:-2] + b"\0\0" + struct.pack("<I", 2) + b"\0\1"]
    for elem_no, vr in META_ELEMENTS:
        if elem_no in values:
            raw = encode_text(values[elem_no], vr)
            if raw is None:
                raise ValueError("file meta values must be ASCII")
            body.append(SHORT.pack(2, elem_no, vr.encode(), len(raw)) + raw)
    content = b"".join(body)
    return SHORT.pack(2, 0, b"UL", 4) + struct.pack("<I", len(content)) + content
