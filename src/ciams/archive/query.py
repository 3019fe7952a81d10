"""Attribute matching on the index, shared by C-FIND (PS3.4 C.2.2.2) and QIDO-RS (PS3.18 8.3.4).

Matching types: universal (empty value), single value, wildcard (``*`` and ``?``),
range (DA, TM, DT: ``a-b``, ``-b``, ``a-``), list of UIDs (backslash or comma
separated) and, as a lenient extension, a backslash list of alternatives for other
string attributes. Person names match case-insensitively (as Orthanc does); other
strings are case-sensitive. Keys not in the index cannot be matched: they are ignored
for matching (PS3.4 allows an SCP to not support optional matching keys) and answered
from the stored file when asked for as return keys.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, cast

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, and_, exists, false, func, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from ciams.archive.models import Instance, Patient, Series, Study
from ciams.archive.parse import normalize_time
from ciams.errors import InvalidRequestError

Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
LEVELS: tuple[Level, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_LEVEL_MODEL: dict[str, Any] = {
    "PATIENT": Patient,
    "STUDY": Study,
    "SERIES": Series,
    "IMAGE": Instance,
}

# Indexed attributes: keyword -> (level, column).
COLUMNS: dict[str, tuple[Level, InstrumentedAttribute[Any]]] = {
    "PatientID": ("PATIENT", Patient.patient_id),
    "IssuerOfPatientID": ("PATIENT", Patient.issuer_of_patient_id),
    "PatientName": ("PATIENT", Patient.patient_name),
    "PatientBirthDate": ("PATIENT", Patient.patient_birth_date),
    "PatientSex": ("PATIENT", Patient.patient_sex),
    "StudyInstanceUID": ("STUDY", Study.study_instance_uid),
    "StudyDate": ("STUDY", Study.study_date),
    "StudyTime": ("STUDY", Study.study_time),
    "AccessionNumber": ("STUDY", Study.accession_number),
    "StudyID": ("STUDY", Study.study_id),
    "StudyDescription": ("STUDY", Study.study_description),
    "ReferringPhysicianName": ("STUDY", Study.referring_physician_name),
    "SeriesInstanceUID": ("SERIES", Series.series_instance_uid),
    "Modality": ("SERIES", Series.modality),
    "SeriesNumber": ("SERIES", Series.series_number),
    "SeriesDescription": ("SERIES", Series.series_description),
    "BodyPartExamined": ("SERIES", Series.body_part_examined),
    "SeriesDate": ("SERIES", Series.series_date),
    "SeriesTime": ("SERIES", Series.series_time),
    "SOPInstanceUID": ("IMAGE", Instance.sop_instance_uid),
    "SOPClassUID": ("IMAGE", Instance.sop_class_uid),
    "InstanceNumber": ("IMAGE", Instance.instance_number),
    "NumberOfFrames": ("IMAGE", Instance.number_of_frames),
    "Rows": ("IMAGE", Instance.rows),
    "Columns": ("IMAGE", Instance.columns),
}

# Attributes computed from the index, with the lowest level they belong to.
COMPUTED: dict[str, Level] = {
    "NumberOfPatientRelatedStudies": "PATIENT",
    "NumberOfPatientRelatedSeries": "PATIENT",
    "NumberOfPatientRelatedInstances": "PATIENT",
    "NumberOfStudyRelatedSeries": "STUDY",
    "NumberOfStudyRelatedInstances": "STUDY",
    "ModalitiesInStudy": "STUDY",
    "SOPClassesInStudy": "STUDY",
    "NumberOfSeriesRelatedInstances": "SERIES",
    "InstanceAvailability": "PATIENT",
}

_UID_LIST_SPLIT = str.maketrans({",": "\\"})


@dataclass(frozen=True)
class Scope:
    """Which studies a caller may see: ``grants`` of (trial, site), '' meaning any;
    ``None`` grants everything (administrators, the archive's own work)."""

    grants: tuple[tuple[str, str], ...] | None = None

    def study_clause(self) -> ColumnElement[bool] | None:
        """A WHERE clause on :class:`Study`, None when unrestricted."""
        if self.grants is None:
            return None
        if not self.grants:
            return false()
        parts: list[ColumnElement[bool]] = []
        for trial, site in self.grants:
            conds = [Study.trial_code == trial] if trial else []
            if site:
                conds.append(Study.site_code == site)
            parts.append(and_(*conds) if conds else true())
        return or_(*parts)

    def allows(self, trial: str, site: str) -> bool:
        """Whether a study of this trial and site is visible."""
        if self.grants is None:
            return True
        return any((not t or t == trial) and (not s or s == site) for t, s in self.grants)


EVERYTHING = Scope()


@dataclass
class FindQuery:
    """A query at one level: matching keys and the keys to return."""

    level: Level
    filters: dict[str, str] = field(default_factory=dict)
    return_keys: list[str] = field(default_factory=list)
    limit: int | None = None
    offset: int = 0
    fuzzy_names: bool = False

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise InvalidRequestError(f"unknown query level {self.level!r}")


@dataclass
class FindResult:
    """Matches as datasets, plus the return keys that only the stored file can answer."""

    matches: list[Dataset]
    file_keys: list[str]
    storage_keys: list[str]


def level_index(level: Level) -> int:
    return LEVELS.index(level)


def find(session: Session, query: FindQuery, *, scope: Scope = EVERYTHING) -> FindResult:
    """Run a query against the index."""
    depth = level_index(query.level)
    model = _LEVEL_MODEL[query.level]
    stmt: Any = select(Patient)
    entities: list[Any] = [Patient]
    if depth >= 1:
        stmt = select(Study, Patient).join(Patient, Study.patient_pk == Patient.id)
        entities = [Study, Patient]
    if depth >= 2:
        stmt = (
            select(Series, Study, Patient)
            .join(Study, Series.study_pk == Study.id)
            .join(Patient, Study.patient_pk == Patient.id)
        )
        entities = [Series, Study, Patient]
    if depth >= 3:
        stmt = (
            select(Instance, Series, Study, Patient)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .join(Patient, Study.patient_pk == Patient.id)
        )
        entities = [Instance, Series, Study, Patient]
    for keyword, value in query.filters.items():
        clause = _clause(keyword, value, depth, query.fuzzy_names)
        if clause is not None:
            stmt = stmt.where(clause)
    visible = scope.study_clause()
    if visible is not None:
        if depth == 0:
            stmt = stmt.where(exists().where((Study.patient_pk == Patient.id) & visible))
        else:
            stmt = stmt.where(visible)
    stmt = stmt.order_by(model.id)
    if query.offset:
        stmt = stmt.offset(query.offset)
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    rows = session.execute(stmt).all()

    wanted = list(dict.fromkeys(query.return_keys))
    file_keys = [k for k in wanted if k not in COLUMNS and k not in COMPUTED and tag_for_keyword(k)]
    computed = _computed_values(session, query.level, wanted, rows, visible)
    matches: list[Dataset] = []
    storage_keys: list[str] = []
    for row in rows:
        objs = dict(zip([e.__name__ for e in entities], row, strict=True))
        ds = Dataset()
        for keyword in wanted:
            if keyword in COLUMNS:
                lvl, col = COLUMNS[keyword]
                if level_index(lvl) > depth:
                    continue
                obj = objs[_LEVEL_MODEL[lvl].__name__]
                _set(ds, keyword, getattr(obj, col.key))
            elif keyword in COMPUTED and level_index(COMPUTED[keyword]) <= depth:
                pk = objs[_LEVEL_MODEL[_computed_owner(keyword)].__name__].id
                _set(ds, keyword, computed.get(keyword, {}).get(pk, _zero(keyword)))
        matches.append(ds)
        if depth == 3:
            storage_keys.append(objs["Instance"].storage_key)
        else:
            storage_keys.append("")
    return FindResult(matches=matches, file_keys=file_keys, storage_keys=storage_keys)


def _computed_owner(keyword: str) -> Level:
    if keyword == "InstanceAvailability":
        return "PATIENT"
    return COMPUTED[keyword]


def _zero(keyword: str) -> Any:
    if keyword == "InstanceAvailability":
        return "ONLINE"
    if keyword in ("ModalitiesInStudy", "SOPClassesInStudy"):
        return []
    return 0


@lru_cache(maxsize=4096)
def _tag_vr(keyword: str) -> tuple[int, str]:
    """(tag, VR) of a keyword, looked up once: pydicom's keyword lookup is slow per call."""
    tag = tag_for_keyword(keyword) or 0
    return tag, dictionary_VR(tag)


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    tag, vr = _tag_vr(keyword)
    if value is None or value == "":
        ds.add_new(tag, vr, None)
        return
    if isinstance(value, list):
        ds.add_new(tag, vr, value if value else None)
        return
    if vr in ("IS", "US", "UL", "SL", "SS") and not isinstance(value, int):
        try:
            value = int(value)
        except ValueError:
            value = None
    if isinstance(value, str) and "\\" in value and vr not in ("PN",):
        ds.add_new(tag, vr, value.split("\\"))
        return
    ds.add_new(tag, vr, value)


def _visible(clause: ColumnElement[bool] | None) -> list[ColumnElement[bool]]:
    return [] if clause is None else [clause]


def _computed_values(
    session: Session,
    level: Level,
    wanted: list[str],
    rows: Iterable[Any],
    visible: ColumnElement[bool] | None = None,
) -> dict[str, dict[int, Any]]:
    rows = list(rows)
    keys = [k for k in wanted if k in COMPUTED and level_index(COMPUTED[k]) <= level_index(level)]
    out: dict[str, dict[int, Any]] = {}
    if not rows or not keys:
        return out
    depth = level_index(level)
    # position of each level's object inside a row
    pos = {lvl: depth - level_index(lvl) for lvl in LEVELS[: depth + 1]}

    def ids(lvl: Level) -> list[int]:
        return sorted({row[pos[lvl]].id for row in rows})

    for key in keys:
        if key == "InstanceAvailability":
            out[key] = {pk: "ONLINE" for pk in ids("PATIENT")}
        elif key == "NumberOfPatientRelatedStudies":
            stmt = (
                select(Study.patient_pk, func.count(Study.id))
                .where(Study.patient_pk.in_(ids("PATIENT")), *_visible(visible))
                .group_by(Study.patient_pk)
            )
            out[key] = dict(session.execute(stmt).all())
        elif key == "NumberOfPatientRelatedSeries":
            stmt = (
                select(Study.patient_pk, func.count(Series.id))
                .join(Series, Series.study_pk == Study.id)
                .where(Study.patient_pk.in_(ids("PATIENT")), *_visible(visible))
                .group_by(Study.patient_pk)
            )
            out[key] = dict(session.execute(stmt).all())
        elif key == "NumberOfPatientRelatedInstances":
            stmt = (
                select(Study.patient_pk, func.count(Instance.id))
                .join(Series, Series.study_pk == Study.id)
                .join(Instance, Instance.series_pk == Series.id)
                .where(Study.patient_pk.in_(ids("PATIENT")), *_visible(visible))
                .group_by(Study.patient_pk)
            )
            out[key] = dict(session.execute(stmt).all())
        elif key == "NumberOfStudyRelatedSeries":
            stmt = (
                select(Series.study_pk, func.count(Series.id))
                .where(Series.study_pk.in_(ids("STUDY")))
                .group_by(Series.study_pk)
            )
            out[key] = dict(session.execute(stmt).all())
        elif key == "NumberOfStudyRelatedInstances":
            stmt = (
                select(Series.study_pk, func.count(Instance.id))
                .join(Instance, Instance.series_pk == Series.id)
                .where(Series.study_pk.in_(ids("STUDY")))
                .group_by(Series.study_pk)
            )
            out[key] = dict(session.execute(stmt).all())
        elif key in ("ModalitiesInStudy", "SOPClassesInStudy"):
            col: Any = Series.modality if key == "ModalitiesInStudy" else Instance.sop_class_uid
            values_stmt: Any = (
                select(Series.study_pk, col).distinct().where(Series.study_pk.in_(ids("STUDY")))
            )
            if key == "SOPClassesInStudy":
                values_stmt = values_stmt.join(Instance, Instance.series_pk == Series.id)
            found: dict[int, list[str]] = defaultdict(list)
            for pk, value in session.execute(values_stmt).all():
                if value:
                    found[pk].append(str(value))
            out[key] = {pk: sorted(v) for pk, v in found.items()}
        elif key == "NumberOfSeriesRelatedInstances":
            stmt = (
                select(Instance.series_pk, func.count(Instance.id))
                .where(Instance.series_pk.in_(ids("SERIES")))
                .group_by(Instance.series_pk)
            )
            out[key] = dict(session.execute(stmt).all())
    return out


# -- matching ----------------------------------------------------------------------------


def _clause(keyword: str, value: str, depth: int, fuzzy: bool) -> ColumnElement[bool] | None:
    value = value.strip() if isinstance(value, str) else value
    if value in ("", None, "*"):
        return None  # universal matching
    if keyword == "ModalitiesInStudy":
        options = [v for v in value.split("\\") if v]
        return exists().where(
            (Series.study_pk == Study.id)
            & or_(*[_string_match(Series.modality, v) for v in options])
        )
    if keyword == "SOPClassesInStudy":
        options = [v for v in value.translate(_UID_LIST_SPLIT).split("\\") if v]
        return exists().where(
            (Series.study_pk == Study.id)
            & (Instance.series_pk == Series.id)
            & Instance.sop_class_uid.in_(options)
        )
    if keyword not in COLUMNS:
        if tag_for_keyword(keyword) is None:
            raise InvalidRequestError(f"unknown attribute {keyword!r}")
        return None  # not indexed: matching not supported for this optional key
    level, col = COLUMNS[keyword]
    if level_index(level) > depth:
        raise InvalidRequestError(
            f"{keyword} belongs to the {level} level and cannot be matched at a higher level"
        )
    vr = dictionary_VR(tag_for_keyword(keyword) or 0)
    if vr == "UI":
        uids = [v.strip() for v in value.translate(_UID_LIST_SPLIT).split("\\") if v.strip()]
        return col.in_(uids) if len(uids) > 1 else col == uids[0]
    if vr in ("DA", "TM", "DT"):
        return _range_match(col, value, vr)
    if vr in ("IS", "US", "UL", "SL", "SS"):
        try:
            numbers = [int(v) for v in value.split("\\") if v.strip()]
        except ValueError as exc:
            raise InvalidRequestError(f"{keyword} must be a number, got {value!r}") from exc
        return col.in_(numbers)
    options = [v for v in value.split("\\") if v != ""]
    clauses = [_string_match(col, v, person_name=vr == "PN", fuzzy=fuzzy) for v in options]
    return or_(*clauses) if len(clauses) > 1 else clauses[0]


def _like_pattern(value: str) -> str:
    escaped = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return escaped.replace("*", "%").replace("?", "_")


def _string_match(
    col: Any, value: str, *, person_name: bool = False, fuzzy: bool = False
) -> ColumnElement[bool]:
    wildcard = "*" in value or "?" in value
    if person_name:
        target = func.lower(col)
        value = value.lower()
        if fuzzy and not wildcard:
            # QIDO fuzzymatching: any name component starting with the value.
            pattern = _like_pattern(value)
            return or_(
                target.like(pattern + "%", escape="!"),
                target.like("%^" + pattern + "%", escape="!"),
                target.like("% " + pattern + "%", escape="!"),
            )
    else:
        target = col
    if wildcard:
        return target.like(_like_pattern(value), escape="!")
    return target == value


def _range_match(col: Any, value: str, vr: str) -> ColumnElement[bool]:
    if "-" not in value:
        if vr == "TM":
            return cast(ColumnElement[bool], col == normalize_time(value))
        return cast(ColumnElement[bool], col == value)
    low, _, high = value.partition("-")
    low, high = low.strip(), high.strip()
    if vr == "TM":
        low = normalize_time(low) if low else ""
        high = (normalize_time(high) + ("" if "." in high else ".999999")) if high else ""
    elif vr == "DT" and high:
        high = high + "\uffff"
    parts: list[ColumnElement[bool]] = [col != ""]
    if low:
        parts.append(col >= low)
    if high:
        parts.append(col <= high)
    if not low and not high:
        raise InvalidRequestError(f"empty range {value!r}")
    return and_(*parts)


def keyword_of(tag: int) -> str:
    """Keyword for a tag, '' when private or unknown."""
    return keyword_for_tag(tag) or ""
