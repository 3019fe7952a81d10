"""Date shifting (Modified Dates option, PS3.15 E.3.6) and age computation (E.3.5).

Every date of one subject moves by the same number of days, derived from the
trial secret and the subject code, so intervals between visits survive while the
real dates do not.  Whole days keep times of day (TM) and weekdays-modulo-7 aside
unchanged; Longitudinal Temporal Information Modified (0028,0303) is set to
``MODIFIED`` by the engine.
"""

from __future__ import annotations

import datetime as dt
import functools

from ciams.deid.uids import derive_int


def offset_days(secret: bytes, subject: str, lo: int, hi: int) -> int:
    """The subject's shift in days, in ``[lo, hi]``, never 0."""
    span = hi - lo + 1
    days = lo + derive_int(secret, "date-shift", subject) % span
    return days if days != 0 else (hi if hi != 0 else lo)


@functools.lru_cache(maxsize=4096)  # a series repeats its dates in every file
def _shift_da(value: str, days: int) -> str:
    v = value.strip()
    if len(v) != 8 or not v.isdigit():
        return ""  # unparseable dates cannot be shifted: they are emptied, never kept
    try:
        d = dt.date(int(v[:4]), int(v[4:6]), int(v[6:8]))
    except ValueError:
        return ""
    try:
        return (d + dt.timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return ""


def shift_da(value: str, days: int) -> str:
    """Shift a DA value (also multi-valued ``a\\b`` and ranges ``a-b``)."""
    out = []
    for part in value.split("\\"):
        if "-" in part:
            lo, _, hi = part.partition("-")
            out.append(
                f"{_shift_da(lo, days) if lo.strip() else ''}-"
                f"{_shift_da(hi, days) if hi.strip() else ''}"
            )
        else:
            out.append(_shift_da(part, days))
    return "\\".join(out)


def shift_dt(value: str, days: int) -> str:
    """Shift a DT value: the date part moves, time and UTC offset stay."""
    out = []
    for part in value.split("\\"):
        p = part.strip()
        if len(p) < 8:
            out.append("")  # a year or month alone is too coarse to shift consistently
            continue
        shifted = _shift_da(p[:8], days)
        out.append(shifted + p[8:] if shifted else "")
    return "\\".join(out)


def _parse(value: str | None) -> dt.date | None:
    if not value:
        return None
    v = value.strip()[:8]
    if len(v) != 8 or not v.isdigit():
        return None
    try:
        return dt.date(int(v[:4]), int(v[4:6]), int(v[6:8]))
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def age_string(birth: str | None, reference: str | None) -> str | None:
    """Patient's Age (AS, PS3.5 6.2) at ``reference`` for a birth date, or None.

    Years from 2 years on, months under 2 years, weeks under 2 months, days under 4 weeks.
    """
    b, r = _parse(birth), _parse(reference)
    if b is None or r is None or r < b:
        return None
    days = (r - b).days
    years = r.year - b.year - ((r.month, r.day) < (b.month, b.day))
    if years >= 2:
        return f"{min(years, 999):03d}Y"
    months = (r.year - b.year) * 12 + r.month - b.month - (r.day < b.day)
    if months >= 2:
        return f"{months:03d}M"
    if days >= 28:
        return f"{days // 7:03d}W"
    return f"{days:03d}D"
