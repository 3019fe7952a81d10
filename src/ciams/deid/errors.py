"""Errors of the de-identification domain (all derive from :class:`ciams.errors.DeidError`)."""

from __future__ import annotations

from dataclasses import dataclass

from ciams.errors import DeidError


class RecipeError(DeidError):
    """A trial recipe is malformed or asks for something impossible."""

    code = "deid-recipe"
    http_status = 400
    default_hint = "fix the recipe file; docs/deid.md lists every key"


class UnknownSubjectError(DeidError):
    """The patient is not in the subject map and the recipe refuses unknown patients."""

    code = "deid-unknown-subject"
    default_hint = (
        "add the patient to the subjects CSV (patient_id,subject_id) or set "
        "'unknown_subject: generate' in the recipe"
    )


class PixelRedactionError(DeidError):
    """Pixel data needed redaction but could not be decoded or rewritten."""

    code = "deid-pixels"
    default_hint = "install the decoders (pylibjpeg, python-gdcm) or blank the image by hand"


@dataclass(frozen=True)
class Leak:
    """One identifying value found in a de-identified output.

    ``where`` is the attribute path (``(0010,0010)`` or
    ``(0040,A730)[0]>(0040,A160)``), ``kind`` what matched (``identifier:PatientName``
    or ``pattern:email``); the matched value itself is never stored, so a leak can be
    logged and written into a quarantine reason without repeating the PHI.
    """

    where: str
    kind: str

    def __str__(self) -> str:
        return f"{self.kind} at {self.where}"


class LeakDetectedError(DeidError):
    """The de-identified output still carries identifying values: it is quarantined."""

    code = "deid-leak"
    default_hint = "the file went to quarantine; add a recipe rule that removes the attribute"

    def __init__(self, message: str, leaks: list[Leak], *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.leaks = leaks


class NotDeidentifiedError(DeidError):
    """An instance sent to a trial that requires de-identification is not de-identified."""

    code = "deid-not-deidentified"
    http_status = 422
    default_hint = "de-identify the instance with the trial recipe (ciams deid) before sending it"

    def __init__(self, message: str, reasons: list[str], *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reasons = reasons
