"""One exception hierarchy for all of CIAMS.

Every error carries what the user must know (``message``), what to do about it
(``hint``), a stable machine code, and how each interface reports it: an HTTP
status for REST/DICOMweb and a DIMSE status for DICOM network services. The
table of codes lives here and nowhere else, as Orthanc keeps ``ErrorCodes.json``.
"""

from __future__ import annotations

from typing import ClassVar

# DIMSE status values (PS3.4 / PS3.7 Annex C) used across the services.
DIMSE_SUCCESS = 0x0000
DIMSE_OUT_OF_RESOURCES = 0xA700  # Storage: Refused, out of resources
DIMSE_DATASET_MISMATCH = 0xA900  # Storage: Error, data set does not match SOP class
DIMSE_CANNOT_UNDERSTAND = 0xC000  # Storage: Error, cannot understand
DIMSE_PROCESSING_FAILURE = 0x0110
DIMSE_NOT_AUTHORIZED = 0x0124  # Refused: not authorized
DIMSE_DUPLICATE_SOP = 0x0111
DIMSE_MOVE_DESTINATION_UNKNOWN = 0xA801
DIMSE_IDENTIFIER_MISMATCH = 0xA900  # Find/Move/Get: identifier does not match SOP class
DIMSE_UNABLE_TO_PROCESS = 0xC000
DIMSE_WARNING_COERCION = 0xB000  # Storage: coercion of data elements
DIMSE_WARNING_ELEMENTS_DISCARDED = 0xB006


class CiamsError(Exception):
    """Base class: every error CIAMS raises on purpose derives from this."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    dimse_status: ClassVar[int] = DIMSE_PROCESSING_FAILURE
    default_hint: ClassVar[str] = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def to_dict(self) -> dict[str, str]:
        """The JSON body an HTTP interface returns for this error."""
        body = {"error": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        return body


class ConfigError(CiamsError):
    """A setting is missing or invalid."""

    code = "config"
    default_hint = "check the configuration file and CIAMS_* environment variables"


class NotFoundError(CiamsError):
    """The object does not exist, or the caller may not see it (indistinguishable)."""

    code = "not-found"
    http_status = 404
    dimse_status = DIMSE_UNABLE_TO_PROCESS


class InvalidRequestError(CiamsError):
    """The request itself is malformed (bad query key, bad parameter)."""

    code = "invalid-request"
    http_status = 400
    dimse_status = DIMSE_IDENTIFIER_MISMATCH


class UnsupportedMediaTypeError(CiamsError):
    """The content type is not one this endpoint accepts."""

    code = "unsupported-media-type"
    http_status = 415


class NotAcceptableError(CiamsError):
    """None of the media types the client accepts can be produced."""

    code = "not-acceptable"
    http_status = 406


class PayloadTooLargeError(CiamsError):
    """The upload exceeds the configured maximum size."""

    code = "payload-too-large"
    http_status = 413
    dimse_status = DIMSE_OUT_OF_RESOURCES
    default_hint = "split the upload or raise max_upload_bytes in the configuration"


class ArchiveError(CiamsError):
    """Base for storage and index errors."""

    code = "archive"


class InvalidInstanceError(ArchiveError):
    """The received bytes are not a storable DICOM instance (kept in quarantine)."""

    code = "invalid-instance"
    http_status = 400
    dimse_status = DIMSE_CANNOT_UNDERSTAND
    default_hint = "the file was kept in quarantine; fix the source and send it again"


class StudyMismatchError(InvalidInstanceError):
    """An instance sent to one study's resource belongs to another study."""

    code = "study-mismatch"
    http_status = 409
    dimse_status = DIMSE_DATASET_MISMATCH
    default_hint = "send it to its own study's resource, or to /studies"


class ConflictError(ArchiveError):
    """The same SOP Instance UID is already stored with different content."""

    code = "conflict"
    http_status = 409
    # The issue asks C-STORE to "reject with a warning status": PS3.4 has no storage
    # status for a duplicate, so the stored copy is kept and B000 carries the comment.
    dimse_status = DIMSE_WARNING_COERCION
    default_hint = "the stored instance was kept; set archive.on_conflict = 'version' to keep both"


class StorageError(ArchiveError):
    """Bytes could not be written or read durably."""

    code = "storage"
    http_status = 507
    dimse_status = DIMSE_OUT_OF_RESOURCES
    default_hint = "check free disk space and permissions of the data folder"


class NetError(CiamsError):
    """DICOM networking errors (unknown destination AE, association failures)."""

    code = "net"
    http_status = 502


class UnknownDestinationError(NetError):
    """C-MOVE destination AE title is not registered."""

    code = "unknown-destination"
    http_status = 404
    dimse_status = DIMSE_MOVE_DESTINATION_UNKNOWN
    default_hint = "register it with: ciams ae add NAME HOST PORT"


class DeidError(CiamsError):
    """De-identification errors (recipe, profile, leak guard)."""

    code = "deid"
    http_status = 422
    dimse_status = DIMSE_CANNOT_UNDERSTAND


class AccessDeniedError(CiamsError):
    """Authenticated but not allowed. Interfaces that must not leak existence map
    object-level denials to :class:`NotFoundError` instead."""

    code = "forbidden"
    http_status = 403
    dimse_status = DIMSE_NOT_AUTHORIZED


class AuthenticationError(CiamsError):
    """Missing or invalid credentials."""

    code = "unauthenticated"
    http_status = 401
    dimse_status = DIMSE_NOT_AUTHORIZED


def error_table() -> list[dict[str, object]]:
    """Every error code with its HTTP and DIMSE status, for the docs."""
    seen: list[type[CiamsError]] = []
    stack: list[type[CiamsError]] = [CiamsError]
    while stack:
        cls = stack.pop(0)
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return [
        {
            "code": c.code,
            "class": c.__name__,
            "http": c.http_status,
            "dimse": f"0x{c.dimse_status:04X}",
            "doc": (c.__doc__ or "").strip().splitlines()[0],
        }
        for c in seen
    ]
