"""Query/Retrieve identifiers: from a C-FIND/C-MOVE/C-GET identifier to archive queries.

Implements the identifier rules of PS3.4 C.4.1 (C-FIND: every present element is a
return key, every non-empty one a matching key; responses carry the requested keys,
Query/Retrieve Level and Specific Character Set) and C.4.2/C.4.3 (C-MOVE/C-GET:
unique keys select the instances), for the Patient Root and Study Root information
models (PS3.4 C.6.1, C.6.2).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pynetdicom.events import Event

from ciams.archive import EVERYTHING, LEVELS, Archive, FindQuery, InstanceRef, Level, Scope
from ciams.errors import InvalidRequestError

Model = Literal["PATIENT", "STUDY"]

# Q/R SOP Class UIDs (PS3.4 C.6.1.3, C.6.2.3) -> information model root.
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
MODELS: dict[str, Model] = {
    PATIENT_ROOT_FIND: "PATIENT",
    PATIENT_ROOT_MOVE: "PATIENT",
    PATIENT_ROOT_GET: "PATIENT",
    STUDY_ROOT_FIND: "STUDY",
    STUDY_ROOT_MOVE: "STUDY",
    STUDY_ROOT_GET: "STUDY",
}

# Unique key of each level (PS3.4 C.6.1.1 / C.6.2.1).
UNIQUE_KEYS: dict[Level, str] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

# Not query keys: the level itself, the character set, and command/file meta groups.
_CONTROL = {"QueryRetrieveLevel", "SpecificCharacterSet"}
_TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"}


def model_of(sop_class_uid: str | None) -> Model:
    """The information model of a Q/R SOP class."""
    try:
        return MODELS[str(sop_class_uid)]
    except KeyError as exc:
        raise InvalidRequestError(f"unsupported Q/R SOP class {sop_class_uid}") from exc


def decode_identifier(event: Event) -> Dataset:
    """The request's identifier; an undecodable one is the requestor's error."""
    try:
        return event.identifier
    except Exception as exc:  # pydicom raises many types on malformed input
        raise InvalidRequestError(f"cannot decode the identifier: {exc}") from exc


def query_level(identifier: Dataset, model: Model) -> Level:
    """The Query/Retrieve Level, checked against the information model."""
    raw = identifier.get("QueryRetrieveLevel")
    level = str(raw or "").strip().upper()
    if not level:
        raise InvalidRequestError("Query/Retrieve Level (0008,0052) is missing")
    if level not in LEVELS:
        raise InvalidRequestError(f"unknown Query/Retrieve Level {level[:16]!r}")
    if model == "STUDY" and level == "PATIENT":
        # Study Root has no patient level (PS3.4 C.6.2.1).
        raise InvalidRequestError("PATIENT level is not in the Study Root model")
    return level


def element_text(elem: DataElement) -> str:
    """An element's value as a matching string (multi-values joined by backslash)."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return ""  # binary values are never matching keys
    if isinstance(value, list | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


@dataclass
class FindRequest:
    """A parsed C-FIND identifier."""

    level: Level
    query: FindQuery
    # (keyword, VR) of each requested key, in identifier order
    keys: list[tuple[str, str]] = field(default_factory=list)
    charset_requested: bool = False
    # The request's item of each sequence key; None asks for the whole sequence.
    templates: dict[str, Dataset | None] = field(default_factory=dict)

    def response(self, match: Dataset) -> Dataset:
        """The pending-response identifier for one match (PS3.4 C.4.1.1.3.2)."""
        out = Dataset()
        for keyword, vr in self.keys:
            if vr == "SQ":
                stored = match.get(keyword)  # by keyword: the value
                items = stored if isinstance(stored, Sequence) else []
                out.add_new(keyword, "SQ", _requested_items(items, self.templates.get(keyword)))
            elif keyword in match:
                out[keyword] = match[keyword]
            else:
                out.add_new(keyword, vr, None)
        out.QueryRetrieveLevel = self.level
        if not _is_ascii(out):
            # Index values are Unicode; UTF-8 represents all of them.
            out.SpecificCharacterSet = "ISO_IR 192"
        elif self.charset_requested:
            out.add_new("SpecificCharacterSet", "CS", None)  # empty: default repertoire
        return out


def _template(elem: DataElement) -> Dataset | None:
    """The item of a sequence key that says which of its attributes to return.

    PS3.4 C.2.2.2.6: the key has one item; a zero-length item (or, leniently, no item
    at all) asks for the entire sequence.
    """
    items = elem.value or []
    if len(items) > 1:
        raise InvalidRequestError(
            f"sequence key {elem.keyword or elem.tag} must have one item, not {len(items)}"
        )
    item: Dataset | None = items[0] if items and len(items[0]) else None
    for nested in item if item is not None else ():
        if nested.VR == "SQ":
            _template(nested)  # a bad nested key is refused before any response is sent
    return item


def _requested_items(stored: Iterable[Dataset], template: Dataset | None) -> Sequence:
    """The stored items with only the attributes the request's item names (recursively).

    Item key values are not matched (sequences are not indexed): every stored item
    comes back.
    """
    if template is None:
        return Sequence(copy.deepcopy(list(stored)))
    nested_templates = {key.tag: _template(key) for key in template if key.VR == "SQ"}
    out = Sequence()
    for item in stored:
        reduced = Dataset()
        for key in template:
            if key.VR == "SQ":
                nested = item.get(key.tag)
                values = nested.value if nested is not None and nested.VR == "SQ" else []
                reduced.add_new(key.tag, "SQ", _requested_items(values, nested_templates[key.tag]))
            elif key.tag in item:
                reduced[key.tag] = copy.deepcopy(item[key.tag])
            else:
                reduced.add_new(key.tag, key.VR, None)
        out.append(reduced)
    return out


def _is_ascii(ds: Dataset) -> bool:
    for elem in ds.iterall():
        if elem.VR in _TEXT_VRS and elem.value is not None and not element_text(elem).isascii():
            return False
    return True


def parse_find(identifier: Dataset, model: Model) -> FindRequest:
    """Matching and return keys of a C-FIND identifier."""
    level = query_level(identifier, model)
    filters: dict[str, str] = {}
    keys: list[tuple[str, str]] = []
    templates: dict[str, Dataset | None] = {}
    for tag in list(identifier.keys()):
        if tag.group in (0x0000, 0x0002) or tag.is_private:
            continue
        try:
            elem = identifier[tag]
        except Exception as exc:  # pydicom raises many types on bad values
            raise InvalidRequestError(f"cannot decode element {tag}: {exc}") from exc
        keyword = elem.keyword
        if not keyword or keyword in _CONTROL:
            continue
        keys.append((keyword, elem.VR))
        if elem.VR == "SQ":
            # A return key only: sequences are not indexed, so their items are not
            # matched (PS3.4 C.2.2.2.6 matching of optional keys need not be supported).
            templates[keyword] = _template(elem)
            continue
        value = element_text(elem)
        if value:
            filters[keyword] = value
    unique = UNIQUE_KEYS[level]
    if all(k != unique for k, _ in keys):
        keys.append((unique, "LO" if unique == "PatientID" else "UI"))
    query = FindQuery(level=level, filters=filters, return_keys=[k for k, _ in keys])
    return FindRequest(
        level=level,
        query=query,
        keys=keys,
        charset_requested="SpecificCharacterSet" in identifier,
        templates=templates,
    )


def retrieve_refs(
    archive: Archive, identifier: Dataset, model: Model, scope: Scope = EVERYTHING
) -> list[InstanceRef]:
    """Stored instances selected by a C-MOVE/C-GET identifier's unique keys
    (PS3.4 C.4.2.2.1, C.4.3.2.1); wildcards are not allowed there."""
    level = query_level(identifier, model)
    filters: dict[str, str] = {}
    top = 0 if model == "PATIENT" else 1
    for lvl in LEVELS[top : LEVELS.index(level) + 1]:
        keyword = UNIQUE_KEYS[lvl]
        value = element_text(identifier[keyword]) if keyword in identifier else ""
        if not value:
            if lvl == level:
                raise InvalidRequestError(f"{keyword} is required for a {level} level retrieve")
            continue
        if "*" in value or "?" in value:
            raise InvalidRequestError(f"{keyword} must not contain wildcards in a retrieve")
        filters[keyword] = value
    matches = archive.find(
        FindQuery(
            level="IMAGE", filters=filters, return_keys=["StudyInstanceUID", "SOPInstanceUID"]
        ),
        scope=scope,
    )
    by_study: dict[str, set[str]] = defaultdict(set)
    for ds in matches:
        by_study[str(ds.StudyInstanceUID)].add(str(ds.SOPInstanceUID))
    refs: list[InstanceRef] = []
    for study_uid, sops in by_study.items():
        refs.extend(
            r for r in archive.instances(study_uid, scope=scope) if r.sop_instance_uid in sops
        )
    return refs
