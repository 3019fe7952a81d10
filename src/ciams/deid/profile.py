"""The Basic Application Level Confidentiality Profile compiled into a lookup table.

PS3.15 Annex E (E.1, E.2, E.3) defines an action per attribute for the Basic
Profile (Table E.1-1) and per option (E.3.1 - E.3.11).  :func:`compile_profile`
resolves them once, for a set of options and recipe overrides, into a plain
``dict[int, int]`` from tag to one of the action codes below, so that the engine
does one dictionary lookup per element.

How the table's compound actions are resolved (E.1.1, "X/Z", "X/D", ...: the
choice depends on the attribute's Type in the IOD, which differs by IOD):

* ``Z/D``, ``X/D``, ``X/Z/D`` -> ``D`` (a dummy keeps Type 1 attributes valid),
* ``X/Z`` -> ``Z`` (an empty value is valid for Type 2 and 3 alike),
* ``X/Z/U*`` (reference sequences) -> keep the sequence, replace the UIDs inside,
* ``D`` on a sequence -> keep the items cleaned with this same table, except that
  code sequences (items with a Code Value) get one dummy code item,
* ``Z`` on a sequence -> empty sequence,
* ``K`` on a sequence -> keep the items, cleaned (E.1.1: "cleaned for sequences").

When several options name an attribute, ``K`` wins over ``C`` which wins over
the Basic Profile action (options only ever retain or clean more).

Attributes not in Table E.1-1 are kept only if known to be safe (see
:mod:`ciams.deid.safe`); anything else, including every private attribute
(unless Retain Safe Private applies) and unknown public tags, is removed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from ciams.deid._standard import annex_e
from ciams.deid._standard.dictionary import DICTIONARY
from ciams.deid.errors import RecipeError
from ciams.deid.safe import CLEANED_TEXT_KEYWORDS, SAFE_PRIVATE, SAFE_TEXT_KEYWORDS, TEXT_VRS

# Action codes (small ints keep the hot loop cheap).
KEEP = 0  #: unchanged
REMOVE = 1  #: X
EMPTY = 2  #: Z (zero length; empty sequence)
DUMMY = 3  #: D (dummy value consistent with the VR)
UID = 4  #: U (deterministic replacement)
CLEAN = 5  #: C on text: kept if made of safe vocabulary, else emptied (safe.clean_text)
SHIFT = 6  #: C on dates/times under Modified Dates: shifted by the subject's offset
RECURSE = 7  #: sequence kept, items cleaned with this table
DUMMY_SQ = 8  #: D on a sequence
SUBJECT = 9  #: replaced by the trial subject code (Patient Name, Patient ID)
AGE = 10  #: Patient's Age, computed when missing (Retain Patient Characteristics)

ACTION_NAMES = {
    KEEP: "keep",
    REMOVE: "remove",
    EMPTY: "empty",
    DUMMY: "dummy",
    UID: "uid",
    CLEAN: "clean",
    SHIFT: "shift",
    RECURSE: "recurse",
    DUMMY_SQ: "dummy-sequence",
    SUBJECT: "subject",
    AGE: "age",
}


class Option(enum.StrEnum):
    """Options of PS3.15 E.3 with their code in CID 7050 (De-identification Method)."""

    RETAIN_SAFE_PRIVATE = "retain_safe_private"
    RETAIN_UIDS = "retain_uids"
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    RETAIN_INSTITUTION_IDENTITY = "retain_institution_identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    RETAIN_LONG_FULL_DATES = "retain_long_full_dates"
    RETAIN_LONG_MODIFIED_DATES = "retain_long_modified_dates"
    CLEAN_DESCRIPTORS = "clean_descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean_structured_content"
    CLEAN_GRAPHICS = "clean_graphics"


#: CID 7050 codes (scheme DCM) written into De-identification Method Code Sequence.
OPTION_CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    Option.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    Option.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    Option.RETAIN_LONG_FULL_DATES: (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    Option.RETAIN_LONG_MODIFIED_DATES: (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}

NON_TEXT_SAFE_VRS = frozenset(
    {
        "CS",
        "DS",
        "IS",
        "US",
        "SS",
        "UL",
        "SL",
        "UV",
        "SV",
        "FL",
        "FD",
        "AT",
        "OB",
        "OW",
        "OF",
        "OD",
        "OL",
        "OV",
        "US or SS",
        "OB or OW",
        "US or SS or OW",
        "US or OW",
    }
)
DATE_VRS = frozenset({"DA", "DT", "TM"})
BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
#: VRs whose source values count as identifiers for the leak guard.
IDENTIFIER_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "DA", "DT", "AE", "UR", "UI"})

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
PATIENT_AGE = 0x00101010
TEXT_VALUE = 0x0040A160
UNFORMATTED_TEXT_VALUE = 0x00700006
PIXEL_DATA = 0x7FE00010
#: Group 0x0002 is rebuilt by the writer; it is never copied from the source.
FILE_META_GROUP = 0x0002


def _resolve(
    basic: str, overrides: Iterable[str], vr: str, tag: int, options: frozenset[str]
) -> int:
    acts = set(overrides)
    if "K" in acts:
        return RECURSE if vr == "SQ" else KEEP
    if "C" in acts and vr not in BINARY_VRS:
        if vr == "SQ":
            return RECURSE
        if vr in DATE_VRS:
            return SHIFT if Option.RETAIN_LONG_MODIFIED_DATES in options else KEEP
        if vr in TEXT_VRS or vr == "CS":
            return CLEAN  # a code string holds arbitrary letters and digits too
        return KEEP  # numbers: nothing to clean
    # C on a binary value (maker notes, time stamps): it cannot be cleaned, so the
    # Basic Profile action applies
    if vr == "SQ":
        if basic == "X":
            return REMOVE
        if basic == "X/Z/U*":
            return RECURSE
        if basic == "D":
            return DUMMY_SQ
        return EMPTY
    if basic == "X":
        return REMOVE
    if basic in ("Z", "X/Z"):
        return EMPTY
    if basic in ("D", "Z/D", "X/D", "X/Z/D"):
        return UID if vr == "UI" else DUMMY
    if basic == "U":
        return UID
    raise RecipeError(f"unhandled action {basic!r} for tag {tag:08X}")


@dataclass(frozen=True)
class CompiledProfile:
    """Tag -> action table for one combination of options and recipe overrides."""

    actions: dict[int, int]
    vrs: dict[int, str]
    options: frozenset[str]
    keep_overlays: bool = False
    keep_curves: bool = False
    safe_private: frozenset[tuple[str, int]] = frozenset()
    #: tags whose values in the source are identifying (for cleaning and the leak guard)
    identifying: frozenset[int] = field(default_factory=frozenset)

    def action(self, tag: int) -> int:
        """Action for a tag not found in :attr:`actions` (repeating groups, private, unknown)."""
        group = tag >> 16
        if group & 1:
            return REMOVE  # private; safe private handled by the engine with the creator
        if 0x5000 <= group <= 0x501E:
            return KEEP if self.keep_curves else REMOVE
        if 0x6000 <= group <= 0x601E:
            return KEEP if self.keep_overlays else REMOVE
        return REMOVE  # unknown public attribute: whitelist mindset


def _tag(spec: str | int) -> int:
    if isinstance(spec, int):
        return spec
    text = spec.strip()
    found = _KEYWORDS.get(text)
    if found is not None:
        return found
    cleaned = text.strip("()").replace(",", "").replace(" ", "")
    try:
        if len(cleaned) == 8:
            return int(cleaned, 16)
    except ValueError:
        pass
    raise RecipeError(f"unknown attribute {spec!r}", hint="use a DICOM keyword or '(gggg,eeee)'")


def parse_tags(specs: Iterable[str | int]) -> list[int]:
    """Keywords or ``(gggg,eeee)`` strings -> tags (raises :class:`RecipeError`)."""
    return [_tag(s) for s in specs]


def _class_like(keyword: str) -> bool:
    return keyword.endswith(("ClassUID", "SyntaxUID", "CodingSchemeUID")) or keyword in {
        "ContextUID",
        "MappingResourceUID",
        "ContextGroupExtensionCreatorUID",
        "PrivateInformationCreatorUID",
        "CodingSchemeUID",
    }


_BASE_CACHE: dict[frozenset[str], tuple[dict[int, int], dict[int, str], frozenset[int]]] = {}


def _base(options: frozenset[str]) -> tuple[dict[int, int], dict[int, str], frozenset[int]]:
    cached = _BASE_CACHE.get(options)
    if cached is not None:
        return cached
    actions: dict[int, int] = {}
    vrs: dict[int, str] = {}
    # 1. everything in the public dictionary that is not in Table E.1-1 and is safe
    for tag, (vr, keyword) in DICTIONARY.items():
        vrs[tag] = vr
        if tag >> 16 == FILE_META_GROUP:
            continue
        if vr in NON_TEXT_SAFE_VRS:
            actions[tag] = KEEP
        elif vr == "SQ":
            actions[tag] = RECURSE
        elif vr == "UI":
            # class-like UIDs name a kind of thing, not an instance; the engine also
            # keeps any well-known (PS3.6 Annex A) UID value as it is
            actions[tag] = KEEP if _class_like(keyword) else UID
        elif keyword in SAFE_TEXT_KEYWORDS:
            actions[tag] = KEEP
        elif keyword in CLEANED_TEXT_KEYWORDS:
            actions[tag] = CLEAN
    # 2. Table E.1-1 overrides
    identifying: set[int] = set()
    for tag, (_kw, vr, basic, per_option) in annex_e.ATTRIBUTES.items():
        vr = vr or vrs.get(tag, "UN")
        vrs[tag] = vr
        overrides = [act for opt, act in per_option.items() if opt in options]
        act = _resolve(basic, overrides, vr, tag, options)
        actions[tag] = act
        if (act in (REMOVE, EMPTY, DUMMY, UID, SHIFT) and vr in IDENTIFIER_VRS) or (
            vr == "PN" and act != KEEP
        ):
            identifying.add(tag)
    # 3. what the trial needs in any case
    actions[PATIENT_NAME] = SUBJECT
    actions[PATIENT_ID] = SUBJECT
    identifying.update({PATIENT_NAME, PATIENT_ID})
    if Option.RETAIN_PATIENT_CHARACTERISTICS in options:
        actions[PATIENT_AGE] = AGE
    # Free text inside structured content and graphic/waveform annotations: the table
    # replaces the enclosing sequences (D); a dummy keeps Type 1C conformance.
    actions[TEXT_VALUE] = CLEAN if Option.CLEAN_STRUCTURED_CONTENT in options else DUMMY
    actions[UNFORMATTED_TEXT_VALUE] = CLEAN if Option.CLEAN_GRAPHICS in options else DUMMY
    result = (actions, vrs, frozenset(identifying))
    _BASE_CACHE[options] = result
    return result


def compile_profile(
    options: Iterable[str],
    *,
    keep: Iterable[str | int] = (),
    remove: Iterable[str | int] = (),
    keep_overlays: bool = False,
    keep_curves: bool = False,
    safe_private: Iterable[tuple[str, int]] = (),
) -> CompiledProfile:
    """Compile Table E.1-1, the given options and recipe keep/remove lists.

    ``keep`` wins over the table (an explicit decision of the trial, recorded in the
    recipe); ``remove`` wins over everything.
    """
    opts = frozenset(Option(o).value for o in options)
    if {Option.RETAIN_LONG_FULL_DATES, Option.RETAIN_LONG_MODIFIED_DATES} <= opts:
        raise RecipeError("the Full Dates and Modified Dates options exclude each other")
    base_actions, vrs, identifying = _base(opts)
    actions = dict(base_actions)
    ident = set(identifying)
    for tag in parse_tags(keep):
        actions[tag] = RECURSE if vrs.get(tag) == "SQ" else KEEP
        ident.discard(tag)
    for tag in parse_tags(remove):
        actions[tag] = REMOVE
    private = set(SAFE_PRIVATE) if Option.RETAIN_SAFE_PRIVATE in opts else set()
    private.update((c.strip().upper(), e) for c, e in safe_private)
    return CompiledProfile(
        actions=actions,
        vrs=vrs,
        options=opts,
        keep_overlays=keep_overlays,
        keep_curves=keep_curves,
        safe_private=frozenset(private),
        identifying=frozenset(ident),
    )


_KEYWORDS = {keyword: tag for tag, (_vr, keyword) in DICTIONARY.items() if keyword}


def keyword_for(tag: int) -> str:
    """The PS3.6 keyword of a public tag ('' when unknown)."""
    entry = DICTIONARY.get(tag)
    return entry[1] if entry else ""


def describe(tag: int) -> str:
    """``(gggg,eeee) Keyword`` for messages and reports (never a value)."""
    kw = keyword_for(tag) or ("private" if (tag >> 16) & 1 else "")
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}){' ' + kw if kw else ''}"
