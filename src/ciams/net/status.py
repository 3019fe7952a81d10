"""DIMSE status responses: the one place where results and errors become status codes.

Statuses and the Error Comment (0000,0902) follow PS3.7 Annex C and the service
definitions of PS3.4 (B.2.3 Storage, C.4.1.1.4 C-FIND, C.4.2.1.5 C-MOVE,
C.4.3.1.4 C-GET).
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from ciams.archive import IngestResult
from ciams.errors import (
    DIMSE_CANNOT_UNDERSTAND,
    DIMSE_OUT_OF_RESOURCES,
    DIMSE_SUCCESS,
    DIMSE_WARNING_COERCION,
    CiamsError,
)

# Statuses a C-FIND/C-MOVE/C-GET response may carry (PS3.4 C.4.1.1.4, C.4.2.1.5,
# C.4.3.1.4); any other error status is reported as "unable to process".
_QR_FAILURES = {0xA700, 0xA701, 0xA702, 0xA801, 0xA900, 0x0122, 0x0124}
_STORE_FAILURES = {0xA700, 0xA900, 0xC000, 0x0117, 0x0122, 0x0124, 0x0211}


def error_comment(text: str) -> str:
    """Text fit for Error Comment (VR LO): at most 64 characters, no backslash or
    control characters (PS3.5 6.2)."""
    clean = "".join(c if " " <= c <= "~" and c != "\\" else " " for c in text)
    clean = " ".join(clean.split())
    return clean if len(clean) <= 64 else clean[:61] + "..."


def status(code: int, comment: str = "") -> Dataset:
    """A status dataset for a pynetdicom handler, with Error Comment when given."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = error_comment(comment)
    return ds


def store_status(result: IngestResult) -> Dataset:
    """C-STORE response status for an ingest result (PS3.4 B.2.3)."""
    if result.ok:
        return status(DIMSE_SUCCESS)
    if result.status == "conflict":
        # The stored instance was kept and the new bytes are in quarantine: the
        # sender is told with a warning rather than a failure it would retry forever.
        return status(
            DIMSE_WARNING_COERCION, "conflict: SOP UID stored with other content; kept old"
        )
    error = result.error
    if error is None:
        code = DIMSE_CANNOT_UNDERSTAND if result.status == "rejected" else DIMSE_OUT_OF_RESOURCES
        return status(code, result.reason or result.status)
    code = error.dimse_status
    if code not in _STORE_FAILURES and not 0xC000 <= code <= 0xCFFF:
        code = DIMSE_CANNOT_UNDERSTAND if result.status == "rejected" else DIMSE_OUT_OF_RESOURCES
    return status(code, error.message)


def query_error_status(exc: CiamsError) -> Dataset:
    """Failure status for a C-FIND/C-MOVE/C-GET request that raised ``exc``."""
    code = exc.dimse_status
    if code not in _QR_FAILURES and not 0xC000 <= code <= 0xCFFF:
        code = DIMSE_CANNOT_UNDERSTAND
    return status(code, exc.message)
