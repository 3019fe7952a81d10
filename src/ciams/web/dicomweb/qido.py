"""QIDO-RS: Search Transaction (PS3.18 10.6) on the archive's index.

Matching and counts are the index's (:meth:`Archive.find`); this module turns query
parameters into a :class:`FindQuery` (PS3.18 8.3.4) and datasets into the DICOM JSON
Model (PS3.18 Annex F). The default return attributes are those of PS3.18 Tables
10.6.3-3/4/5 that the index holds, so a default search never opens stored files;
attributes kept only in the files (e.g. Timezone Offset From UTC, Bits Allocated)
are returned when asked for with ``includefield``.
"""

from __future__ import annotations

import functools
import json
import re

from fastapi import APIRouter, Request
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from starlette.responses import Response

from ciams.archive import COLUMNS, COMPUTED, LEVELS, FindQuery, Level
from ciams.errors import InvalidRequestError, NotAcceptableError
from ciams.web.dicomweb.context import Context, instance_url, series_url, study_url
from ciams.web.dicomweb.media import DICOM_JSON, parse_accept

# PS3.18 Table 10.6.3-3 (Study), 10.6.3-4 (Series), 10.6.3-5 (Instance): the indexed
# ones, plus Study Description and the UIDs of the levels above, which viewers need.
STUDY_KEYS = [
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
]
SERIES_KEYS = [
    "Modality",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "StudyInstanceUID",
]
INSTANCE_KEYS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "StudyInstanceUID",
    "SeriesInstanceUID",
]
_DEFAULTS: dict[str, list[str]] = {
    "STUDY": STUDY_KEYS,
    "SERIES": SERIES_KEYS,
    "IMAGE": INSTANCE_KEYS,
}
_CONTROL = {"limit", "offset", "fuzzymatching", "includefield", "orderby"}
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_MATCHABLE = set(COLUMNS) | {"ModalitiesInStudy", "SOPClassesInStudy"}


def register(router: APIRouter, ctx: Context) -> None:
    """Add the QIDO-RS routes (PS3.18 Table 10.6.1-2)."""
    query = ctx.access.require("query")

    @router.get("/studies", tags=["QIDO-RS"], summary="Search for studies", dependencies=[query])
    async def studies(request: Request) -> Response:
        return await _search(ctx, request, "STUDY", {}, [])

    @router.get("/series", tags=["QIDO-RS"], summary="Search for series", dependencies=[query])
    async def all_series(request: Request) -> Response:
        return await _search(ctx, request, "SERIES", {}, STUDY_KEYS)

    @router.get(
        "/studies/{study}/series",
        tags=["QIDO-RS"],
        summary="Search for series",
        dependencies=[query],
    )
    async def study_series(request: Request, study: str) -> Response:
        return await _search(ctx, request, "SERIES", {"StudyInstanceUID": study}, [])

    @router.get(
        "/instances", tags=["QIDO-RS"], summary="Search for instances", dependencies=[query]
    )
    async def all_instances(request: Request) -> Response:
        return await _search(ctx, request, "IMAGE", {}, STUDY_KEYS + SERIES_KEYS)

    @router.get(
        "/studies/{study}/instances",
        tags=["QIDO-RS"],
        summary="Search for instances",
        dependencies=[query],
    )
    async def study_instances(request: Request, study: str) -> Response:
        return await _search(ctx, request, "IMAGE", {"StudyInstanceUID": study}, SERIES_KEYS)

    @router.get(
        "/studies/{study}/series/{series}/instances",
        tags=["QIDO-RS"],
        summary="Search for instances",
        dependencies=[query],
    )
    async def series_instances(request: Request, study: str, series: str) -> Response:
        scope = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        return await _search(ctx, request, "IMAGE", scope, [])


def attribute_keyword(key: str) -> str:
    """Keyword of a query key given as keyword or as tag (``00100020``)."""
    if "." in key:
        raise InvalidRequestError(
            f"sequence attribute paths are not supported for matching ({key!r})"
        )
    if _TAG.match(key):
        keyword = keyword_for_tag(int(key, 16))
        if not keyword:
            raise InvalidRequestError(f"unknown or private attribute tag {key}")
        return keyword
    if tag_for_keyword(key) is None:
        raise InvalidRequestError(
            f"unknown attribute {key!r}",
            hint="use a DICOM keyword (PatientID) or tag (00100020)",
        )
    return key


def _non_negative(name: str, value: str) -> int:
    if not value.isdigit():
        raise InvalidRequestError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def build_query(
    level: Level,
    params: list[tuple[str, str]],
    scope: dict[str, str],
    extra: list[str],
    max_results: int | None = None,
) -> tuple[FindQuery, list[str]]:
    """The index query for QIDO parameters, and warnings for ignored matching keys.

    ``max_results`` caps the answer (``archive.query_limit``); more matches than returned
    are announced with a Warning (PS3.18 8.3.4.4.1).
    """
    filters: dict[str, str] = {}
    include: list[str] = []
    limit, offset, fuzzy = max_results, 0, False
    for key, value in params:
        lower = key.lower()
        if lower == "limit":
            asked = _non_negative(key, value)
            limit = asked if max_results is None else min(asked, max_results)
        elif lower == "offset":
            offset = _non_negative(key, value)
        elif lower == "fuzzymatching":
            fuzzy = value.strip().lower() == "true"
        elif lower == "includefield":
            include.extend(v.strip() for v in value.split(",") if v.strip())
        elif lower == "orderby":
            continue  # optional; results come in the index's insertion order
        else:
            keyword = attribute_keyword(key)
            filters[keyword] = f"{filters[keyword]}\\{value}" if keyword in filters else value
    filters.update(scope)
    depth = LEVELS.index(level)
    keys = list(_DEFAULTS[level]) + list(extra)
    for name in include:
        if name.lower() == "all":
            keys += [k for k, (lvl, _) in COLUMNS.items() if LEVELS.index(lvl) <= depth]
            keys += [k for k, lvl in COMPUTED.items() if LEVELS.index(lvl) <= depth]
        else:
            keys.append(attribute_keyword(name))
    keys += [k for k in filters if k not in keys]
    ignored = [k for k, v in filters.items() if v and k not in _MATCHABLE]
    warnings = []
    if ignored:
        warnings.append(
            "The following attributes are not supported for matching and were ignored: "
            + ", ".join(sorted(ignored))
        )
    query = FindQuery(
        level=level,
        filters=filters,
        return_keys=list(dict.fromkeys(keys)),
        limit=None if limit is None else limit + 1,  # one more, to know whether more exist
        offset=offset,
        fuzzy_names=fuzzy,
    )
    return query, warnings


async def _search(
    ctx: Context, request: Request, level: Level, scope: dict[str, str], extra: list[str]
) -> Response:
    accept = parse_accept(request.headers.get("accept"))
    if not any(a.matches(DICOM_JSON) or a.matches("application/json") for a in accept):
        raise NotAcceptableError(f"search results are available as {DICOM_JSON}")
    query, warnings = build_query(
        level,
        request.query_params.multi_items(),
        scope,
        extra,
        ctx.settings.archive.query_limit or None,
    )
    matches = await ctx.read(functools.partial(ctx.archive.find, query, scope=request.state.scope))
    request.state.audit_objects = sorted(
        {str(ds.StudyInstanceUID) for ds in matches if ds.get("StudyInstanceUID")}
    )[:100]
    if query.limit is not None and len(matches) >= query.limit:
        matches = matches[: query.limit - 1]
        warnings.append("There are additional results that can be requested")
    root = ctx.root(request)
    body = [_json(ds, level, root) for ds in matches]
    headers = [("warning", f'299 ciams "{w}"') for w in warnings]
    if not body:
        # PS3.18 8.3.4.4.1: no match is 204 with an empty payload (CP-2473 would make
        # it 200; dicomweb-client and viewers accept both).
        response = Response(status_code=204)
    else:
        response = Response(json.dumps(body), media_type=DICOM_JSON)
    for name, value in headers:
        response.headers.append(name, value)
    return response


def _json(ds: Dataset, level: Level, root: str) -> dict[str, object]:
    study = str(ds.get("StudyInstanceUID", "") or "")
    if level == "STUDY":
        url = study_url(root, study)
    elif level == "SERIES":
        url = series_url(root, study, str(ds.get("SeriesInstanceUID", "") or ""))
    else:
        url = instance_url(
            root,
            study,
            str(ds.get("SeriesInstanceUID", "") or ""),
            str(ds.get("SOPInstanceUID", "") or ""),
        )
    ds.add_new(0x00081190, dictionary_VR(0x00081190), url)  # Retrieve URL
    return ds.to_json_dict(suppress_invalid_tags=True)
