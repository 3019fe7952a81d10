"""The PHI leak guard (scan of de-identified output) and the ingest check.

After de-identification the serialized output (file meta, every element of every
sequence level, all VRs; pixel data excluded, that is what OCR is for) is searched
for the identifying values of the source (names and their components, IDs,
dates, addresses, phone numbers, institution and physician names, original
instance UIDs) and for patterns (e-mail addresses, phone numbers).  The search is
one compiled regular expression over the lower-cased bytes, so it costs little;
only when it hits is the output walked to say which attribute leaked.

:func:`check_ingest` is the central archive's guard (PS3.15 E.1.1 conformance of
a de-identifier's output): an instance for a trial that requires de-identification
must say Patient Identity Removed = YES, carry a subject code as patient name and
no attribute the profile removes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ciams.deid.errors import Leak, NotDeidentifiedError
from ciams.deid.profile import (
    DATE_VRS,
    EMPTY,
    PIXEL_DATA,
    REMOVE,
    CompiledProfile,
    Option,
    compile_profile,
    describe,
    keyword_for,
)
from ciams.deid.uids import is_well_known

if TYPE_CHECKING:  # pydicom is imported only where datasets are handled
    from pydicom import Dataset
    from pydicom.dataelem import DataElement, RawDataElement

    from ciams.deid.recipe import Recipe

#: Patterns searched in every output (over and above the source's own values).
DEFAULT_PATTERNS: dict[str, str] = {
    "email": r"[a-z0-9._%+\-]{2,}@[a-z0-9\-]{2,}(?:\.[a-z0-9\-]{2,})+",
    "phone": (
        r"(?<![0-9.\\])(?:\+[0-9]{1,3}[ \-])?\(?[0-9]{2,4}\)?[ \-][0-9]{3,4}[ \-][0-9]{3,5}"
        r"(?![0-9.])"
    ),
    "ssn": r"(?<![0-9])[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9])",
}
#: A necessary condition of each built-in pattern (every match contains a match of
#: it), cheap to search because it starts with a literal or a small set.
_PREFILTERS: dict[str, str] = {
    "email": r"@[a-z0-9\-]{2,}\.[a-z0-9\-]{2}",
    "phone": r"[ \-][0-9]{3,4}[ \-][0-9]{3}",
    "ssn": r"-[0-9]{2}-[0-9]{4}",
}
#: Values too common to be identifying on their own.
STOPWORDS = frozenset(
    b.lower()
    for b in (
        b"ANONYMIZED",
        b"ANONYMOUS",
        b"ANON",
        b"UNKNOWN",
        b"NONE",
        b"NULL",
        b"N/A",
        b"YES",
        b"NO",
        b"OTHER",
        b"TEST",
        b"DEFAULT",
        b"REMOVED",
        b"MODIFIED",
        b"UNMODIFIED",
        b"19000101",
        b"000000",
        b"0000",
        b"00000000",
    )
)
ID_TAGS = frozenset({0x00100020, 0x00101000, 0x00080050, 0x00101002, 0x00380010})
#: Code Sequence Macro attributes (PS3.3 8.8): coded, not free text.
CODED_TAGS = frozenset({0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00080119, 0x00080120})
#: Device type attributes kept by the whitelist: institution or device names that
#: happen to contain a vendor's name are not leaks there; patient identifiers are.
EQUIPMENT_TAGS = frozenset({0x00080070, 0x00081090, 0x00181020, 0x0018702A, 0x0018702B})
NAME_SPLIT = re.compile(rb"[\^=\\ ,]+")
VALUE_SPLIT = re.compile(rb"\\")


def value_bytes(elem: DataElement | RawDataElement, encoding: str = "utf-8") -> bytes | None:
    """The value of a non-sequence element as bytes (raw if still raw), or None."""
    from pydicom.dataelem import RawDataElement
    from pydicom.sequence import Sequence

    if isinstance(elem, RawDataElement):
        return bytes(elem.value) if elem.value is not None else None
    value = elem.value
    if value is None or isinstance(value, Sequence):
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return b"\\".join(str(v).encode(encoding, "replace") for v in value)
    return str(value).encode(encoding, "replace")


def identifier_tokens(tag: int, vr: str, raw: bytes) -> Iterator[tuple[bytes, bool]]:
    """Identifying fragments of one source value, lower-cased: ``(token, is_component)``.

    Components (parts of a person name) are searched only in free text, not in coded
    attributes; whole values everywhere.  Short and common values are left out, they
    would match by chance: names parts under 3 letters, other values under 6
    characters (4 digits for patient IDs and accession numbers), stop words.
    """
    low = raw.lower().strip(b"\0 ")
    if not low or low in STOPWORDS:
        return
    if vr == "PN":
        if len(low) >= 3:
            yield low, False
        for part in NAME_SPLIT.split(low):
            part = part.strip(b"\0 ")
            if len(part) >= 3 and part.isalpha() and part not in STOPWORDS:
                yield part, True
        return
    is_id = tag in ID_TAGS
    for part in VALUE_SPLIT.split(low):
        part = part.strip(b"\0 ")
        if vr == "DT":
            part = part[:8]
        if part in STOPWORDS or (vr == "UI" and is_well_known(part.decode("ascii", "replace"))):
            continue
        if len(part) < (4 if is_id or vr in ("DA", "DT") else 6):
            continue
        if part.isdigit() and len(part) < (4 if is_id else 6):
            continue
        yield part, False


_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")
_PATTERN_CACHE: dict[str, re.Pattern[bytes]] = {}


def _compiled(pattern: str) -> re.Pattern[bytes]:
    found = _PATTERN_CACHE.get(pattern)
    if found is None:
        found = _PATTERN_CACHE[pattern] = re.compile(pattern.encode())
    return found


class LeakScanner:
    """Searches serialized output for source identifiers and PHI patterns."""

    def __init__(
        self,
        identifiers: dict[bytes, tuple[int, bool]],
        *,
        patterns: dict[str, str] | None = None,
        ignore: Iterable[bytes] = (),
        dates_shifted: bool = False,
    ) -> None:
        for value in ignore:
            identifiers.pop(value.lower(), None)
        self.identifiers = identifiers
        self.dates_shifted = dates_shifted
        pats = dict(DEFAULT_PATTERNS)
        pats.update(patterns or {})
        self._patterns = {k: _compiled(v) for k, v in pats.items()}
        # the quick test: a built-in pattern is searched only where its cheap necessary
        # condition (a literal-led regex, ~50x faster) matches; a recipe's own always
        self._quick = [
            (
                _compiled(_PREFILTERS[k]) if DEFAULT_PATTERNS.get(k) == v else None,
                self._patterns[k],
            )
            for k, v in pats.items()
        ]
        self._tokens = sorted(identifiers, key=len, reverse=True)

    def _found(self, low: bytes) -> Iterator[bytes]:
        for tok in self._tokens:
            if tok in low:
                start = 0
                while (i := low.find(tok, start)) >= 0:
                    j = i + len(tok)
                    if (i == 0 or low[i - 1] not in _ALNUM) and (
                        j == len(low) or low[j] not in _ALNUM
                    ):
                        yield tok
                        break
                    start = i + 1

    def _hits(self, low: bytes, coded: bool = False, equipment: bool = False) -> Iterator[str]:
        for token in self._found(low):
            tag, component = self.identifiers.get(token, (0, False))
            if (component and coded) or (equipment and tag >> 16 != 0x0010 and tag not in ID_TAGS):
                continue
            yield f"identifier:{keyword_for(tag) or describe(tag)}"
        for name, pat in self._patterns.items():
            if pat.search(low):
                yield f"pattern:{name}"

    def scan_bytes(self, header: bytes, text: bytes | None = None) -> bool:
        """Quick test: may ``header`` contain a leak?

        Identifiers are searched in all of ``header``; patterns in ``text`` (the text
        valued elements) when given, else in all of ``header``.
        """
        low = header.lower()
        if any(True for _ in self._found(low)):
            return True
        body = low if text is None else text.lower()
        return any(
            (pre is None or pre.search(body) is not None) and pat.search(body) is not None
            for pre, pat in self._quick
        )

    def locate(self, ds: Dataset) -> list[Leak]:
        """Walk an output dataset (and its file meta) and report each leaking attribute."""
        leaks: list[Leak] = []
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            self._walk(meta, "", leaks)
        self._walk(ds, "", leaks)
        return leaks

    def _walk(self, ds: Dataset, prefix: str, leaks: list[Leak]) -> None:
        from pydicom.dataelem import RawDataElement

        for tag in list(ds.keys()):
            if tag == PIXEL_DATA:
                continue
            elem = ds.get_item(tag)
            where = prefix + describe(int(tag))
            vr = elem.VR
            if vr in (None, "UN") and isinstance(elem, RawDataElement):
                vr = ds[tag].VR
            if vr == "SQ":
                for i, item in enumerate(ds[tag].value):
                    self._walk(item, f"{where}[{i}]>", leaks)
                continue
            raw = value_bytes(elem)
            if not raw:
                continue
            coded = vr in ("CS", "UI") or int(tag) in CODED_TAGS
            equipment = int(tag) in EQUIPMENT_TAGS
            for kind in self._hits(raw.lower(), coded, equipment):
                if self.dates_shifted and vr in DATE_VRS and kind.startswith("identifier"):
                    continue  # a shifted date may equal another source date by chance
                leaks.append(Leak(where, kind))


def collect_identifiers(source: Dataset, profile: CompiledProfile) -> dict[bytes, tuple[int, bool]]:
    """Identifying values of ``source``: values of attributes the profile does not keep."""
    found: dict[bytes, tuple[int, bool]] = {}

    def walk(ds: Dataset) -> None:
        for tag in list(ds.keys()):
            t = int(tag)
            elem = ds.get_item(tag)
            vr = elem.VR if elem.VR not in (None, "UN") else profile.vrs.get(t, "UN")
            if vr == "SQ":
                for item in ds[tag].value:
                    walk(item)
                continue
            if t in profile.identifying:
                raw = value_bytes(elem)
                if raw:
                    for tok, comp in identifier_tokens(t, vr, raw):
                        found.setdefault(tok, (t, comp))

    walk(source)
    return found


def scan_for_leaks(
    source_ds: Dataset, output_ds: Dataset, recipe: Recipe | None = None
) -> list[Leak]:
    """Compare every value of ``output_ds`` with the identifying values of ``source_ds``.

    Returns the leaks found (empty when the output is clean).  The recipe decides
    which attributes were meant to be kept (default: the default recipe).
    """
    from ciams.deid.recipe import default_recipe

    rec = recipe or default_recipe()
    profile = compile_profile(rec.options, keep=rec.keep, remove=rec.remove)
    identifiers = collect_identifiers(source_ds, profile)
    ignore = [str(output_ds.get("PatientID", "")).encode(), *_own_values(output_ds)]
    scanner = LeakScanner(
        identifiers,
        patterns=rec.leak_patterns,
        ignore=ignore,
        dates_shifted=Option.RETAIN_LONG_MODIFIED_DATES in profile.options,
    )
    return scanner.locate(output_ds)


def _own_values(ds: Dataset) -> list[bytes]:
    """Values the de-identifier writes itself (never identifying)."""
    meta = getattr(ds, "file_meta", None)
    own = [str(v).encode() for v in ds.get("DeidentificationMethod", []) or []]
    if meta is not None:
        own += [
            str(meta.get("ImplementationClassUID", "")).encode(),
            str(meta.get("ImplementationVersionName", "")).encode(),
        ]
    return [o for o in own if o]


def check_ingest(ds: Dataset, recipe: Recipe) -> None:
    """Refuse an instance that is not de-identified as ``recipe`` demands.

    Raises :class:`NotDeidentifiedError` listing every reason: Patient Identity
    Removed (0012,0062) not ``YES``, a Patient's Name that is not a subject code,
    Burned In Annotation ``YES``, or any attribute the profile removes (including
    private attributes, overlays and curves) still present with a value.
    """
    if not recipe.require_deidentified_on_ingest:
        return
    reasons: list[str] = []
    if str(ds.get("PatientIdentityRemoved", "")).strip().upper() != "YES":
        reasons.append("Patient Identity Removed (0012,0062) is not YES")
    name = str(ds.get("PatientName", "")).strip()
    pid = str(ds.get("PatientID", "")).strip()
    if not name or not re.match(recipe.subject_pattern, name) or (pid and name != pid):
        reasons.append("Patient's Name (0010,0010) is not a trial subject code")
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        reasons.append("Burned In Annotation (0028,0301) is YES")
    profile = compile_profile(
        recipe.options,
        keep=recipe.keep,
        remove=recipe.remove,
        keep_overlays=recipe.keep_overlays,
        keep_curves=recipe.keep_curves,
        safe_private=recipe.safe_private,
    )
    _check_removed(ds, profile, "", reasons)
    if reasons:
        raise NotDeidentifiedError(
            "the instance is not de-identified for this trial: "
            + "; ".join(reasons[:5])
            + (f" (and {len(reasons) - 5} more)" if len(reasons) > 5 else ""),
            reasons,
        )


#: Attributes the de-identifier writes itself (PS3.3 C.7.1.1, C.7.1.3).
STAMPED_TAGS = frozenset(
    {
        0x00120062,
        0x00120063,
        0x00120064,
        0x00280303,
        0x00120010,
        0x00120020,
        0x00120021,
        0x00120030,
        0x00120031,
        0x00120040,
    }
)


def _check_removed(ds: Dataset, profile: CompiledProfile, prefix: str, reasons: list[str]) -> None:
    for tag in list(ds.keys()):
        t = int(tag)
        if t in STAMPED_TAGS and not prefix:
            continue
        act = profile.actions.get(t)
        if act is None:
            if (t >> 16) & 1 and (t & 0xFF00) == 0 and (t & 0xFF) >= 0x10:
                continue  # private creator: judged with its block
            act = profile.action(t)
            if act == REMOVE and (t >> 16) & 1 and profile.safe_private:
                creator = ds.get((t >> 16, (t >> 8) & 0xFF))
                key = (
                    str(creator.value).strip().upper() if creator is not None else "",
                    (t >> 16) << 8 | (t & 0xFF),
                )
                if key in profile.safe_private:
                    continue
        elem = ds[tag]
        if elem.VR == "SQ":
            if act == REMOVE and len(elem.value):
                reasons.append(f"{prefix}{describe(t)} must be removed")
            elif act != EMPTY:
                for i, item in enumerate(elem.value):
                    _check_removed(item, profile, f"{prefix}{describe(t)}[{i}]>", reasons)
            elif len(elem.value):
                reasons.append(f"{prefix}{describe(t)} must be empty")
            continue
        if act in (REMOVE, EMPTY) and not elem.is_empty:
            reasons.append(
                f"{prefix}{describe(t)} must be {'removed' if act == REMOVE else 'empty'}"
            )
