"""The engine's byte-level fast path for Explicit VR Little Endian files.

Applies exactly the same compiled profile and the same rules as
:meth:`ciams.deid.engine.Deidentifier.deidentify` (tests check that both give the
same bytes), but works on the encoded elements: a kept element is copied as a
slice of the input, a replaced one is encoded directly, sequences are walked item
by item.  No dataset model is built, which makes it several times faster.

It handles the common case and declines (returns ``None``) everything else, which
then goes through the dataset path: other transfer syntaxes, character sets other
than the default repertoire, Latin-1 or UTF-8, elements with VR UN, undefined
length UN, files that need pixel work (OCR or region rules), recipes with safe
private attributes, kept overlays or curves, or a trial section.
"""

from __future__ import annotations

import os
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from ciams.deid import pixels as pixel_ops
from ciams.deid.dates import age_string, offset_days, shift_da, shift_dt
from ciams.deid.encoding import (
    IMPLEMENTATION_UID,
    IMPLEMENTATION_VERSION,
    PREAMBLE,
    TEXT_VRS,
    file_meta_bytes,
)
from ciams.deid.leaks import identifier_tokens
from ciams.deid.profile import (
    ACTION_NAMES,
    AGE,
    CLEAN,
    DUMMY,
    DUMMY_SQ,
    EMPTY,
    KEEP,
    PATIENT_AGE,
    PATIENT_ID,
    PATIENT_NAME,
    RECURSE,
    REMOVE,
    SHIFT,
    SUBJECT,
    UID,
    CompiledProfile,
)
from ciams.deid.safe import clean_text

if TYPE_CHECKING:
    from ciams.deid.engine import Deidentifier
    from ciams.deid.recipe import Rule

_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2s2xI")
_ITEM = struct.Struct("<HHI")
_U32 = struct.Struct("<I")
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_TEXT = TEXT_VRS
_NUMERIC = {
    "US": "<H",
    "SS": "<h",
    "UL": "<I",
    "SL": "<i",
    "UV": "<Q",
    "SV": "<q",
    "FL": "<f",
    "FD": "<d",
    "AT": "<I",
}
_CHARSETS = {
    b"": "latin-1",
    b"ISO_IR 6": "latin-1",
    b"ISO_IR 100": "latin-1",
    b"ISO_IR 192": "utf-8",
}
_TEXT_VRB = frozenset(v.encode() for v in _TEXT | {"SQ"})
_LONG_VRB = frozenset(v.encode() for v in _LONG_VRS)
_FIRST_CHUNK = 1 << 13
_HEAD_CHUNK = 1 << 16
_CODE_TAGS = (0x00080100, 0x00080104, 0x00080119)
_AS_RE = re.compile(r"\d{3}[DWMY]")
PIXEL_DATA = 0x7FE00010


_Elem = tuple[int, str, int, int, int, int]


class FastResult(NamedTuple):
    """What the fast path produced (the engine wraps it into a DeidResult)."""

    header: bytes
    pixel: bytes | memoryview | FileRange
    filename: str
    subject: str
    new_subject: bool
    counts: Counter[str]
    identifiers: dict[bytes, tuple[int, bool]]
    profile: CompiledProfile
    text: bytes


class FileRange:
    """A byte range of a file: the Pixel Data value, copied without reading it."""

    __slots__ = ("length", "offset", "path")

    def __init__(self, path: str, offset: int, length: int) -> None:
        self.path = path
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(self.length)
        if len(data) != self.length:
            raise OSError(f"{self.path} changed while it was de-identified")
        return data


def _decode_header(buf: bytes, pos: int) -> tuple[int, bytes, int, int]:
    """``(tag, VR bytes, value length, value start)`` of the Explicit VR Little Endian
    element header at ``pos`` (the caller checks that 8 bytes are there)."""
    group, elem, vrb, short = _SHORT.unpack_from(buf, pos)
    if vrb in _LONG_VRB:
        return group << 16 | elem, vrb, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    return group << 16 | elem, vrb, short, pos + 8


def _pixel_header_end(head: bytes, size: int) -> int | None:
    """End of the top-level Pixel Data header if its value runs to the end of the file."""
    pos = 132
    end = len(head)
    while pos + 12 <= end:
        tag, _vrb, length, vstart = _decode_header(head, pos)
        if length == 0xFFFFFFFF:
            return None
        if tag == PIXEL_DATA:
            return vstart if vstart + length == size else None
        pos = vstart + length
    return None


class Decline(Exception):
    """The fast path does not handle this input."""


def _elements(buf: bytes, pos: int, end: int, external_end: int = -1) -> Iterator[_Elem]:
    """``(tag, vr, start, value_start, value_end_or_-1, next)`` per element.

    For undefined lengths ``value_end`` is -1 and ``next`` is after the delimiter.
    With ``external_end`` the buffer stops after the Pixel Data header and its value
    (the rest of the file, up to ``external_end``) is not in ``buf``.
    """
    while pos < end:
        if end - pos < 8:
            raise Decline
        tag, vrb, length, vstart = _decode_header(buf, pos)
        if tag >> 16 == 0xFFFE:
            raise Decline  # a delimiter where an element belongs
        vr = vrb.decode("latin-1")
        if vr not in _LONG_VRS and (not vr.isalpha() or not vr.isupper()):
            raise Decline
        if length == 0xFFFFFFFF:
            if vr not in ("SQ", "OB", "OW"):
                raise Decline
            nxt = _skip_undefined(buf, vstart, end)
            yield tag, vr, pos, vstart, -1, nxt
            pos = nxt
            continue
        if vstart + length > end:
            if tag == PIXEL_DATA and vstart == end and vstart + length == external_end:
                yield tag, vr, pos, vstart, vstart + length, vstart + length
                return
            raise Decline
        yield tag, vr, pos, vstart, vstart + length, vstart + length
        pos = vstart + length


def _skip_undefined(buf: bytes, pos: int, end: int) -> int:
    """Position after the Sequence Delimitation Item of an undefined-length value."""
    while pos + 8 <= end:
        group, elem, length = _ITEM.unpack_from(buf, pos)
        if group != 0xFFFE:
            raise Decline
        if elem == 0xE0DD:
            return pos + 8
        if elem != 0xE000:
            raise Decline
        if length == 0xFFFFFFFF:
            pos = _skip_item(buf, pos + 8, end)
        else:
            pos += 8 + length
    raise Decline


def _next_element(buf: bytes, pos: int, end: int) -> int:
    """Position after the element starting at ``pos``."""
    if end - pos < 8:
        raise Decline
    _tag, _vrb, length, vstart = _decode_header(buf, pos)
    if length == 0xFFFFFFFF:
        return _skip_undefined(buf, vstart, end)
    if vstart + length > end:
        raise Decline
    return vstart + length


def _skip_item(buf: bytes, pos: int, end: int) -> int:
    """Position after the Item Delimitation Item of an undefined-length item."""
    while pos + 8 <= end:
        group, elem, _length = _ITEM.unpack_from(buf, pos)
        if group == 0xFFFE and elem == 0xE00D:
            return pos + 8
        pos = _next_element(buf, pos, end)
    raise Decline


def _items(buf: bytes, vstart: int, vend: int, nxt: int) -> Iterator[tuple[int, int]]:
    """``(content_start, content_end)`` of each item of a sequence value."""
    pos = vstart
    end = vend if vend >= 0 else nxt - 8
    while pos + 8 <= end:
        group, elem, length = _ITEM.unpack_from(buf, pos)
        if group != 0xFFFE or elem != 0xE000:
            raise Decline
        if length == 0xFFFFFFFF:
            after = _skip_item(buf, pos + 8, end)
            yield pos + 8, after - 8
            pos = after
        else:
            yield pos + 8, pos + 8 + length
            pos += 8 + length


def _header(tag: int, vr: str, length: int) -> bytes:
    if vr in _LONG_VRS:
        return _LONG.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)
    return _SHORT.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _pad(raw: bytes, vr: str) -> bytes:
    if len(raw) % 2:
        raw += b"\0" if vr in ("UI", "OB", "UN") else b" "
    return raw


def _element(tag: int, vr: str, value: bytes) -> bytes:
    value = _pad(value, vr)
    return _header(tag, vr, len(value)) + value


class FastPath:
    """Byte-level de-identification with the engine's settings."""

    def __init__(self, engine: Deidentifier) -> None:
        self.engine = engine
        rec = engine.recipe
        self.enabled = not (rec.safe_private or rec.keep_overlays or rec.keep_curves or rec.trial)
        self._stamp_cache: dict[tuple[frozenset[str], str], list[tuple[int, bytes]]] = {}
        self._days: dict[str, int] = {}
        self._tokens: dict[tuple[int, str, bytes], tuple[tuple[bytes, bool], ...]] = {}

    # -- entry -------------------------------------------------------------------------------
    def run(self, data: bytes) -> FastResult | None:
        """The de-identified file, or None when the fast path does not apply."""
        if not self.enabled or len(data) < 144 or data[128:132] != b"DICM":
            return None
        try:
            return self._run(data)
        except Decline:
            return None

    def run_file(self, path: str) -> FastResult | None:
        """Like :meth:`run` for a file; a large Pixel Data value is not read but
        referenced (:class:`FileRange`) so it can be copied file to file."""
        if not self.enabled:
            return None
        with open(path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            # most headers are a few KiB: read a little first, more if Pixel Data
            # was not reached, the whole file only when its value is not last
            head = fh.read(_FIRST_CHUNK)
            where = None
            if len(head) < size:
                where = _pixel_header_end(head, size)
                if where is None and len(head) < size and len(head) < _HEAD_CHUNK:
                    head += fh.read(_HEAD_CHUNK - len(head))
                    where = _pixel_header_end(head, size)
                if where is None:
                    head += fh.read()
                else:
                    head = head[:where]
        if len(head) < 144 or head[128:132] != b"DICM":
            return None
        try:
            if len(head) < size:
                return self._run(head, FileRange(path, len(head), size - len(head)))
            return self._run(head)
        except Decline:
            return None

    def _run(self, data: bytes, external: FileRange | None = None) -> FastResult:
        self._external = external
        eng = self.engine
        meta_end = 132
        syntax = b""
        for tag, _vr, _s, vstart, vend, nxt in _elements(data, 132, len(data)):
            if tag >> 16 != 2:
                break
            if tag == 0x00020010:
                syntax = data[vstart:vend].rstrip(b"\0 ")
            meta_end = nxt
        if syntax != b"1.2.840.10008.1.2.1" and not (
            syntax.startswith(b"1.2.840.10008.1.2.4.") or syntax == b"1.2.840.10008.1.2.5"
        ):
            raise Decline
        top = list(
            _elements(
                data, meta_end, len(data), external.offset + external.length if external else -1
            )
        )
        values = {t: (vr, vs, ve) for t, vr, _s, vs, ve, _n in top}

        def text(tag: int) -> str | None:
            found = values.get(tag)
            if found is None or found[2] < 0:
                return None
            v = data[found[1] : found[2]].decode("latin-1").strip("\0 ")
            return v or None

        charset = (
            data[values[0x00080005][1] : values[0x00080005][2]].strip(b"\0 ")
            if 0x00080005 in values
            else b""
        )
        encoding = _CHARSETS.get(charset)
        if encoding is None:
            raise Decline
        self.encoding = encoding

        def number(tag: int) -> str:
            found = values.get(tag)
            if found is None or found[2] - found[1] != 2:
                return ""
            return str(struct.unpack_from("<H", data, found[1])[0])

        match = eng._match_values_from(text, number)
        rules = eng.recipe.matching_rules(match)
        if (rules and any(r.regions for r in rules)) or eng.recipe.matching_regions(match):
            raise Decline
        if self._wants_ocr(text, rules):
            raise Decline
        pid = (
            data[values[PATIENT_ID][1] : values[PATIENT_ID][2]].decode(encoding).strip(" \0")
            if PATIENT_ID in values and values[PATIENT_ID][2] >= 0
            else ""
        )
        subject, new = eng.subject_for(pid)
        profile = eng._profile(rules)
        lo, hi = eng.recipe.date_shift_days
        days = self._days.get(subject)
        if days is None:
            days = offset_days(eng.secret, subject, lo, hi)
            if len(self._days) > 10_000:
                self._days.clear()
            self._days[subject] = days
        self.days = days
        self.subject = subject
        self.profile = profile
        self.identifiers: dict[bytes, tuple[int, bool]] = {}
        self.counts: Counter[int] = Counter()
        self.to_clean: list[tuple[list[tuple[int, Part]], int, int, str, bytes]] = []
        birth = text(0x00100030)
        reference = next(
            (v for v in (text(t) for t in (0x00080020, 0x00080021, 0x00080022, 0x00080023)) if v),
            None,
        )
        self.pixel: bytes | memoryview | FileRange = b""
        out = self._walk(data, top, profile, top=True)
        for target, index, tag, vr, raw in self.to_clean:
            target[index] = (tag, self._clean(tag, vr, raw))
        parts = {tag: _render(part) for tag, part in out}
        if PATIENT_AGE in profile.actions and profile.actions[PATIENT_AGE] in (AGE, KEEP):
            current = parts.get(PATIENT_AGE)
            cur = current[8:].decode("latin-1").strip("\0 ") if current else ""
            if not cur or not _AS_RE.fullmatch(cur):
                age = age_string(birth, reference)
                if age:
                    parts[PATIENT_AGE] = _element(PATIENT_AGE, "AS", age.encode())
                else:
                    parts.pop(PATIENT_AGE, None)
        for tag, raw in self._stamps(profile, subject):
            parts[tag] = raw
        sop = parts.get(0x00080018)
        if sop is None:
            raise Decline
        new_sop = sop[8:].rstrip(b"\0 ").decode("ascii")
        sop_class = text(0x00080016) or "1.2.840.10008.5.1.4.1.1.7"
        meta = file_meta_bytes(
            {
                2: sop_class,
                3: new_sop,
                0x10: syntax.decode("ascii"),
                0x12: IMPLEMENTATION_UID,
                0x13: IMPLEMENTATION_VERSION,
            }
        )
        if len(self.pixel) and max(parts) != PIXEL_DATA:
            raise Decline  # the pixel value must come last to be written apart
        body = [parts[tag] for tag in sorted(parts)]
        # patterns (e-mail, phone, ...) are looked for in text values and sequences only
        text_blob = b"".join(raw for raw in body if raw[4:6] in _TEXT_VRB)
        pixel = self.pixel
        header = PREAMBLE + meta + b"".join(body)
        counts = Counter({ACTION_NAMES[k]: v for k, v in self.counts.items()})
        return FastResult(
            header,
            pixel,
            f"{subject}/{new_sop}.dcm",
            subject,
            new,
            counts,
            self.identifiers,
            profile,
            text_blob,
        )

    def _wants_ocr(self, text: Callable[[int], str | None], rules: tuple[Rule, ...]) -> bool:
        view = cast(Any, _View(text))  # the few Dataset methods wants_ocr uses
        return pixel_ops.wants_ocr(view, self.engine.recipe, text(0x00280301), rules)

    # -- the walk ----------------------------------------------------------------------------
    def _collect(self, tag: int, vr: str, raw: bytes) -> None:
        if raw:
            key = (tag, vr, raw)
            tokens = self._tokens.get(key)
            if tokens is None:  # the files of a series share most identifying values
                tokens = tuple(identifier_tokens(tag, vr, raw))
                if len(self._tokens) > 50_000:
                    self._tokens.clear()
                self._tokens[key] = tokens
            setdefault = self.identifiers.setdefault
            for tok, comp in tokens:
                setdefault(tok, (tag, comp))

    def _collect_seq(self, data: bytes, vs: int, ve: int, nxt: int) -> None:
        ident = self.profile.identifying
        for cs, ce in _items(data, vs, ve, nxt):
            for tag, vr, _s, ivs, ive, inxt in _elements(data, cs, ce):
                if vr == "SQ":
                    self._collect_seq(data, ivs, ive, inxt)
                elif tag in ident and ive >= 0:
                    self._collect(tag, vr, data[ivs:ive])

    def _walk(
        self,
        data: bytes,
        elements: list[_Elem],
        profile: CompiledProfile,
        top: bool = False,
    ) -> list[tuple[int, Part]]:
        actions = profile.actions
        ident = profile.identifying
        out: list[tuple[int, Part]] = []
        eng = self.engine
        for tag, vr, start, vs, ve, nxt in elements:
            if tag >> 16 == 2:
                continue
            act = actions.get(tag)
            if act is None:
                act = profile.action(tag)
                if act != REMOVE:
                    raise Decline
            if vr == "UN":
                raise Decline
            self.counts[act] += 1
            if act == KEEP:
                if tag == PIXEL_DATA and top:  # the bulk: referenced, never copied
                    out.append((tag, data[start:vs]))
                    self.pixel = self._external or memoryview(data)[vs:nxt]
                elif ve >= 0 and (ve - vs) % 2:
                    out.append((tag, _element(tag, vr, data[vs:ve])))
                else:
                    out.append((tag, data[start:nxt]))
                continue
            if self._external is not None and tag == PIXEL_DATA:
                raise Decline  # the value is not in memory
            raw = data[vs:ve] if ve >= 0 else b""
            if tag in ident and vr != "SQ":
                self._collect(tag, vr, raw)
            if act == REMOVE:
                if vr == "SQ":
                    self._collect_seq(data, vs, ve, nxt)
            elif act in (RECURSE, DUMMY_SQ):
                if vr != "SQ":
                    raise Decline
                items = list(_items(data, vs, ve, nxt))
                if act == DUMMY_SQ and any(
                    any(t in _CODE_TAGS for t, *_r in _elements(data, cs, ce)) for cs, ce in items
                ):
                    self._collect_seq(data, vs, ve, nxt)
                    out.append((tag, _DUMMY_CODE_SQ(tag)))
                else:
                    out.append((tag, self._sequence(data, tag, items, profile)))
            elif act == EMPTY:
                if vr == "SQ":
                    self._collect_seq(data, vs, ve, nxt)
                out.append((tag, _header(tag, vr, 0)))
            elif act == UID:
                if raw:
                    value = raw.decode("ascii", "replace")
                    out.append((tag, _element(tag, "UI", eng.uids.map_value(value).encode())))
                else:
                    out.append((tag, data[start:nxt]))
            elif act == SUBJECT:
                out.append((tag, _element(tag, vr, self.subject.encode(self.encoding))))
            elif act == SHIFT:
                if not raw or vr == "TM":
                    out.append((tag, data[start:nxt]))
                else:
                    txt = raw.decode("ascii", "replace").strip("\0 ")
                    shifted = (
                        shift_da(txt, self.days)
                        if vr == "DA"
                        else shift_dt(txt, self.days)
                        if vr == "DT"
                        else None
                    )
                    if shifted is None:
                        out.append((tag, data[start:nxt]))
                    else:
                        out.append((tag, _element(tag, vr, shifted.encode())))
            elif act == CLEAN:
                out.append((tag, b""))
                self.to_clean.append((out, len(out) - 1, tag, vr, raw))
            elif act == DUMMY:
                if vr == "SQ":
                    out.append(
                        (tag, self._sequence(data, tag, list(_items(data, vs, ve, nxt)), profile))
                    )
                else:
                    out.append((tag, _element(tag, vr, _dummy(vr))))
            elif act == AGE:
                out.append((tag, data[start:nxt]))
            else:
                raise Decline
        return out

    def _sequence(
        self, data: bytes, tag: int, items: list[tuple[int, int]], profile: CompiledProfile
    ) -> _Seq:
        return _Seq(
            tag, [self._walk(data, list(_elements(data, cs, ce)), profile) for cs, ce in items]
        )

    def _clean(self, tag: int, vr: str, raw: bytes) -> bytes:
        if vr not in _TEXT or not raw:
            return _header(tag, vr, 0)
        text = raw.decode(self.encoding).rstrip(" \0")
        text = text.lstrip(" ") if vr not in ("LT", "ST", "UT") else text
        if clean_text(text, self.identifiers, self.engine.vocabulary) == text:
            return _element(tag, vr, raw)
        return _header(tag, vr, 0)

    def _stamps(self, profile: CompiledProfile, subject: str) -> list[tuple[int, bytes]]:
        key = (profile.options, subject)
        found = self._stamp_cache.get(key)
        if found is None:
            found = []
            for tag, vr, value in self.engine.stamp_spec(profile, False):
                if vr == "SQ":
                    items = []
                    for code, scheme, meaning in cast("list[tuple[str, str, str]]", value):
                        body = (
                            _element(0x00080100, "SH", code.encode())
                            + _element(0x00080102, "SH", scheme.encode())
                            + _element(0x00080104, "LO", meaning.encode())
                        )
                        items.append(_ITEM.pack(0xFFFE, 0xE000, len(body)) + body)
                    seq = b"".join(items)
                    found.append((tag, _LONG.pack(tag >> 16, tag & 0xFFFF, b"SQ", len(seq)) + seq))
                else:
                    text = (
                        "\\".join(cast("list[str]", value))
                        if isinstance(value, list)
                        else str(value)
                    )
                    found.append((tag, _element(tag, vr, text.encode())))
            subject_raw = subject.encode(self.encoding)
            found.append((PATIENT_NAME, _element(PATIENT_NAME, "PN", subject_raw)))
            found.append((PATIENT_ID, _element(PATIENT_ID, "LO", subject_raw)))
            if len(self._stamp_cache) > 1000:
                self._stamp_cache.clear()
            self._stamp_cache[key] = found
        return found


class _View:
    """The few Dataset methods :func:`ciams.deid.pixels.wants_ocr` uses, over raw text."""

    __slots__ = ("text",)

    def __init__(self, text: Callable[[int], str | None]) -> None:
        self.text = text

    def __contains__(self, key: str) -> bool:
        return key == "PixelData" or self.text(_KW.get(key, 0)) is not None

    def get(self, key: str, default: object = None) -> object:
        value = self.text(_KW.get(key, 0))
        if value is None:
            return default
        return value.split("\\") if key == "ImageType" else value


class _Seq:
    """A sequence whose items are rendered after the cleaning step."""

    __slots__ = ("items", "tag")

    def __init__(self, tag: int, items: list[list[tuple[int, Part]]]) -> None:
        self.tag = tag
        self.items = items


Part = bytes | _Seq


def _render(part: Part) -> bytes:
    if isinstance(part, bytes):
        return part
    items = []
    for item in part.items:
        body = b"".join(_render(p) for _t, p in sorted(item, key=lambda x: x[0]))
        items.append(_ITEM.pack(0xFFFE, 0xE000, len(body)) + body)
    seq = b"".join(items)
    return _LONG.pack(part.tag >> 16, part.tag & 0xFFFF, b"SQ", len(seq)) + seq


def _DUMMY_CODE_SQ(tag: int) -> bytes:
    body = (
        _element(0x00080100, "SH", b"ANON")
        + _element(0x00080102, "SH", b"99CIAMS")
        + _element(0x00080104, "LO", b"anonymized")
    )
    item = _ITEM.pack(0xFFFE, 0xE000, len(body)) + body
    return _LONG.pack(tag >> 16, tag & 0xFFFF, b"SQ", len(item)) + item


def _dummy(vr: str) -> bytes:
    from ciams.deid.engine import DUMMIES

    value = DUMMIES.get(vr, b"\0\0")
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("ascii")
    fmt = _NUMERIC.get(vr)
    if fmt is None:
        raise Decline
    return struct.pack(fmt, value)


_KW = {
    "PixelData": PIXEL_DATA,
    "BurnedInAnnotation": 0x00280301,
    "Modality": 0x00080060,
    "SOPClassUID": 0x00080016,
    "ImageType": 0x00080008,
    "ConversionType": 0x00080064,
}
