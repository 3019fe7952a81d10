"""Media types for DICOMweb: Accept negotiation (PS3.18 8.7) and multipart/related bodies.

Header values are split with python-multipart's ``parse_options_header``; multipart
request bodies are parsed by python-multipart too (see :mod:`.stow`). Only the writing
side of multipart/related (RFC 2387) lives here, because it is a loop over parts.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from python_multipart.multipart import parse_options_header
from starlette.responses import StreamingResponse

from ciams.errors import NotAcceptableError

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET = "application/octet-stream"
MULTIPART = "multipart/related"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"

# Compressed transfer syntax -> media type of a compressed frame (PS3.18 Table 8.7.3-5).
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


@dataclass(frozen=True)
class Accepted:
    """One media range of an Accept header, with its DICOMweb parameters."""

    media_type: str
    part_type: str  # the ``type`` parameter of multipart/related, "" otherwise
    transfer_syntax: str  # "" when absent, "*" for any
    quality: float

    def matches(self, media_type: str) -> bool:
        """Whether this range admits ``media_type`` (``*/*`` and ``type/*`` ranges)."""
        if self.media_type in ("*/*", media_type):
            return True
        major = media_type.split("/", 1)[0]
        return self.media_type == f"{major}/*"


def parse_accept(header: str | None) -> list[Accepted]:
    """The media ranges of an Accept header, best first; ``*/*`` when absent (RFC 9110 12.5.1)."""
    if not header or not header.strip():
        return [Accepted("*/*", "", "", 1.0)]
    out: list[Accepted] = []
    for item in header.split(","):
        if not item.strip():
            continue
        value, params = parse_options_header(item.strip())
        text = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()}
        try:
            quality = float(text.get("q", "1"))
        except ValueError:
            quality = 1.0
        if quality <= 0:
            continue
        out.append(
            Accepted(
                media_type=value.decode("latin-1").lower(),
                part_type=text.get("type", "").lower(),
                transfer_syntax=text.get("transfer-syntax", "").strip(),
                quality=quality,
            )
        )
    return sorted(out, key=lambda a: -a.quality)


def part_ranges(accept: list[Accepted], default_part: str) -> list[Accepted]:
    """The media ranges for the parts of a multipart response.

    ``multipart/related; type=X`` gives X; a bare ``X`` or ``*/*`` is taken as asking
    for parts of X too, as many clients send the part type alone (PS3.18 8.7.5).
    """
    out: list[Accepted] = []
    for item in accept:
        if item.media_type == MULTIPART:
            out.append(
                Accepted(item.part_type or default_part, "", item.transfer_syntax, item.quality)
            )
        elif item.media_type in ("*/*", "multipart/*"):
            out.append(Accepted(default_part, "", item.transfer_syntax, item.quality))
        else:
            out.append(item)
    return out


def choose_transfer_syntax(accept: list[Accepted], stored: Iterable[str]) -> str | None:
    """For ``application/dicom`` parts: ``None`` to send as stored, else the target UID.

    PS3.18 8.7.3.5: ``transfer-syntax=*`` means as stored, and without the parameter the
    default is Explicit VR Little Endian, so instances stored otherwise are transcoded.
    Explicit VR Little Endian is the only target: every archived syntax decodes to it.
    """
    stored = set(stored)
    ranges = [a for a in part_ranges(accept, DICOM) if a.matches(DICOM)]
    if not ranges:
        raise NotAcceptableError(
            'this resource is only available as multipart/related; type="application/dicom"'
        )
    for item in ranges:
        ts = item.transfer_syntax or EXPLICIT_VR_LE
        if ts == "*" or stored <= {ts}:
            return None
        if ts == EXPLICIT_VR_LE:
            return EXPLICIT_VR_LE
    wanted = ", ".join(sorted({a.transfer_syntax for a in ranges}))
    raise NotAcceptableError(
        f"cannot provide transfer syntax {wanted}",
        hint=f"ask for transfer-syntax=* (as stored) or {EXPLICIT_VR_LE}",
    )


def new_boundary() -> str:
    return uuid.uuid4().hex


def part_header(boundary: str, content_type: str, extra: str = "") -> bytes:
    """The delimiter and headers that open one part (RFC 2046 5.1.1)."""
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n{extra}\r\n".encode("latin-1")


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("latin-1")


def multipart_response(
    body: AsyncIterator[bytes | memoryview],
    boundary: str,
    part_type: str,
    transfer_syntax: str = "",
    *,
    length: int | None = None,
) -> StreamingResponse:
    """A streamed ``multipart/related`` response whose parts are ``part_type``.

    ``length``: the exact body size when known up front. It is sent as Content-Length
    instead of chunked transfer coding, which spares uvicorn joining every body write
    with its chunk framing (a copy of each part) and the client parsing that framing.
    """
    media = f'{MULTIPART}; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        media += f"; transfer-syntax={transfer_syntax}"
    headers = {"content-length": str(length)} if length is not None else None
    return StreamingResponse(body, media_type=media, headers=headers)
