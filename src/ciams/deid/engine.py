"""The de-identification engine: one :class:`Deidentifier` per trial recipe.

It applies the compiled PS3.15 Annex E profile (see :mod:`ciams.deid.profile`)
recursively to every sequence level, replaces Patient's Name and Patient ID by
the trial subject code, remaps UIDs (:mod:`ciams.deid.uids`), shifts dates
(:mod:`ciams.deid.dates`), cleans descriptors, redacts pixels
(:mod:`ciams.deid.pixels`), stamps the De-identification Method attributes
(PS3.3 C.7.1.1, CID 7050) and finally runs the leak guard on the serialized
output (:mod:`ciams.deid.leaks`).

Elements that are kept are never decoded: pydicom's raw elements are written back
as read, which keeps the engine fast and the output byte-faithful.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ciams.deid import pixels as pixel_ops
from ciams.deid._standard.annex_e import EDITION
from ciams.deid.dates import age_string, offset_days, shift_da, shift_dt
from ciams.deid.encoding import IMPLEMENTATION_UID, IMPLEMENTATION_VERSION
from ciams.deid.errors import Leak, LeakDetectedError, UnknownSubjectError
from ciams.deid.fastpath import FastPath, FastResult, FileRange
from ciams.deid.leaks import LeakScanner, identifier_tokens, value_bytes
from ciams.deid.profile import (
    ACTION_NAMES,
    AGE,
    CLEAN,
    DUMMY,
    DUMMY_SQ,
    EMPTY,
    KEEP,
    OPTION_CODES,
    PATIENT_AGE,
    RECURSE,
    REMOVE,
    SHIFT,
    SUBJECT,
    UID,
    CompiledProfile,
    Option,
    compile_profile,
)
from ciams.deid.recipe import MATCH_KEYS, Recipe, Rule, default_recipe
from ciams.deid.safe import SAFE_VOCABULARY, clean_text
from ciams.deid.uids import UidMapper, derive_int

if TYPE_CHECKING:
    from pydicom import Dataset
    from pydicom.dataelem import DataElement, RawDataElement
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

log = logging.getLogger(__name__)


def _load_pydicom() -> None:
    """Import pydicom for the dataset path only: the byte path starts faster without it."""
    if "DataElement" in globals():
        return
    from pydicom import Dataset
    from pydicom.dataelem import DataElement, RawDataElement
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    globals().update(
        Dataset=Dataset,
        DataElement=DataElement,
        RawDataElement=RawDataElement,
        Sequence=Sequence,
        ExplicitVRBigEndian=ExplicitVRBigEndian,
        ExplicitVRLittleEndian=ExplicitVRLittleEndian,
        ImplicitVRLittleEndian=ImplicitVRLittleEndian,
    )


DUMMIES: dict[str, Any] = {
    "PN": "ANONYMIZED",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
    "UR": "",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "OB": b"\0\0",
    "OW": b"\0\0",
    "UN": b"\0\0",
    "OF": b"\0\0\0\0",
    "OD": b"\0" * 8,
    "OL": b"\0\0\0\0",
    "OV": b"\0" * 8,
    "AT": 0,
}
CODE_VALUE, CODE_MEANING, LONG_CODE_VALUE = 0x00080100, 0x00080104, 0x00080119
BIRTH_DATE = 0x00100030
REFERENCE_DATES = (0x00080020, 0x00080021, 0x00080022, 0x00080023)
BURNED_IN = 0x00280301


@dataclass
class Redaction:
    """A blanked pixel rectangle; ``source`` is ``rule:<name>`` or ``ocr``."""

    frame: int | None
    x: int
    y: int
    width: int
    height: int
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "x": self.x,
            "y": self.y,
            "width": self.width,
            "height": self.height,
            "source": self.source,
        }


#: ``(tag, VR, value)`` of an attribute the engine writes into every output
Stamp = tuple[int, str, "str | list[str] | list[tuple[str, str, str]]"]


@dataclass
class DeidResult:
    """What :meth:`Deidentifier.deidentify` produced for one instance.

    ``dataset`` is the de-identified dataset; ``data`` the bytes of the output file;
    ``filename`` the generated relative path; ``actions`` counts per action;
    ``redactions`` the blanked pixel boxes; ``rules`` the recipe rules applied.
    """

    _dataset: Dataset | None
    filename: str
    subject_id: str
    new_subject: bool = False
    #: the output file as (everything up to the Pixel Data value, that value)
    parts: tuple[bytes, bytes | memoryview | FileRange] | None = None
    actions: Counter[str] = field(default_factory=Counter)
    redactions: list[Redaction] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    leaks: list[Leak] = field(default_factory=list)

    @property
    def data(self) -> bytes | None:
        """The bytes of the output file."""
        if self.parts is None:
            return None
        header, pixel = self.parts
        if len(pixel):
            self.parts = (header + (pixel.read() if isinstance(pixel, FileRange) else pixel), b"")
        return self.parts[0]

    @property
    def dataset(self) -> Dataset:
        """The de-identified dataset (parsed from ``data`` when made by the fast path)."""
        if self._dataset is None:
            data = self.data
            if data is None:
                raise ValueError("the result holds neither a dataset nor data")
            from ciams.deid.reader import read_fast

            self._dataset = read_fast(data)
        return self._dataset


@dataclass
class _Context:
    """Per-instance state of one run through the dataset."""

    subject: str
    days: int
    identifiers: dict[bytes, tuple[int, bool]] = field(default_factory=dict)
    to_clean: list[tuple[Dataset, int, str]] = field(default_factory=list)
    counts: Counter[int] = field(default_factory=Counter)


class Deidentifier:
    """De-identifies datasets for one trial recipe.

    Parameters
    ----------
    recipe:
        the trial recipe (default: :func:`default_recipe`).
    subjects:
        ``patient_id -> subject_id`` map.
    secret:
        the trial secret keying UID remapping, date shifts and generated codes;
        the same secret gives the same results across runs and sites.
    site:
        the site code, matched by recipe rules with ``match: {site: ...}``.

    Examples
    --------
    >>> from pydicom import Dataset
    >>> ds = Dataset(); ds.PatientName = "DOE^JANE"; ds.PatientID = "123456"
    >>> ds.PatientSex = "F"; ds.SOPInstanceUID = "1.2.3.4"
    >>> ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    >>> deid = Deidentifier(None, {"123456": "LOCAT-0001"}, b"trial-secret")
    >>> out = deid.deidentify(ds).dataset
    >>> str(out.PatientName), out.PatientSex, out.PatientIdentityRemoved
    ('LOCAT-0001', 'F', 'YES')
    """

    def __init__(
        self,
        recipe: Recipe | None,
        subjects: Mapping[str, str] | None,
        secret: bytes,
        *,
        site: str | None = None,
        verify: bool = True,
    ) -> None:
        self.recipe = recipe or default_recipe()
        self.subjects = dict(subjects or {})
        self.secret = secret
        self.site = site or ""
        self.verify = verify
        self.uids = UidMapper(secret, self.recipe.uid_root)
        self._profiles: dict[tuple[int, ...], CompiledProfile] = {}
        self._base = self._profile(())
        self.new_subjects: dict[str, str] = {}
        self._method = self._method_values()
        self._stamps: dict[tuple[frozenset[str], bool], list[DataElement]] = {}
        self._subject_elems: dict[str, tuple[DataElement, DataElement]] = {}
        #: words a cleaned text value may consist of (built-in list + the recipe's)
        self.vocabulary = SAFE_VOCABULARY | frozenset(self.recipe.vocabulary)
        self._fast = FastPath(self)

    # -- setup ------------------------------------------------------------------------------
    def _profile(self, rules: tuple[Rule, ...]) -> CompiledProfile:
        key = tuple(id(r) for r in rules)
        prof = self._profiles.get(key)
        if prof is None:
            r = self.recipe
            prof = compile_profile(
                r.options,
                keep=[*r.keep, *(k for rule in rules for k in rule.keep)],
                remove=[*r.remove, *(k for rule in rules for k in rule.remove)],
                keep_overlays=r.keep_overlays,
                keep_curves=r.keep_curves,
                safe_private=r.safe_private,
            )
            self._profiles[key] = prof
        return prof

    def _method_values(self) -> list[str]:
        opts = "+".join(sorted(OPTION_CODES[o][0] for o in self._base.options))
        return [f"CIAMS deid {self.recipe.label}"[:64], f"PS3.15-{EDITION} 113100 {opts}"[:64]]

    def subject_for(self, patient_id: str) -> tuple[str, bool]:
        """The subject code for a patient ID; ``(code, newly_generated)``."""
        code = self.subjects.get(patient_id)
        if code:
            return code, False
        if not patient_id:
            # one generated code for every instance without an ID would merge patients
            raise UnknownSubjectError(
                "the instance has no Patient ID, so it cannot be mapped to a subject",
                hint="set the Patient ID at the site, or map the empty ID in the subjects CSV",
            )
        if self.recipe.unknown_subject != "generate":
            raise UnknownSubjectError("the patient is not in the subject map")
        code = self.new_subjects.get(patient_id)
        if code is None:
            n = derive_int(self.secret, "subject", patient_id) % 36**8
            digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
            text = "".join(digits[(n // 36**i) % 36] for i in range(7, -1, -1))
            code = f"{self.recipe.subject_prefix}{text}"
            self.new_subjects[patient_id] = code
        return code, True

    # -- the run -------------------------------------------------------------------------------
    def deidentify(self, ds: Dataset) -> DeidResult:
        """De-identify ``ds`` in place and return the result.

        Raises :class:`UnknownSubjectError`, :class:`LeakDetectedError` (the result is
        attached as ``exc.result``) or :class:`~ciams.deid.errors.PixelRedactionError`.
        """
        _load_pydicom()
        pid = str(ds.get("PatientID", "") or "").strip()
        subject, new = self.subject_for(pid)
        match_values = self._match_values(ds)
        rules = self.recipe.matching_rules(match_values)
        profile = self._profile(rules)
        lo, hi = self.recipe.date_shift_days
        ctx = _Context(subject=subject, days=offset_days(self.secret, subject, lo, hi))
        birth = _text(ds, BIRTH_DATE)
        reference = next((v for v in (_text(ds, t) for t in REFERENCE_DATES) if v), None)
        burned_in = _text(ds, BURNED_IN)
        self._walk(ds, profile, ctx)
        for item, tag, vr in ctx.to_clean:
            self._clean(item, tag, vr, ctx)
        result = DeidResult(ds, filename="", subject_id=subject, new_subject=new)
        result.rules = [r.name for r in rules]
        if PATIENT_AGE in profile.actions and profile.actions[PATIENT_AGE] in (AGE, KEEP):
            current = _text(ds, PATIENT_AGE)
            if not current or not re.fullmatch(r"\d{3}[DWMY]", current):
                age = age_string(birth, reference)
                if age:
                    ds.PatientAge = age
                elif PATIENT_AGE in ds:
                    del ds[PATIENT_AGE]
        pixel_cleaned = self._pixels(ds, match_values, burned_in, rules, result)
        self._stamp(ds, profile, subject, pixel_cleaned)
        result.filename = (
            f"{subject}/{ds.SOPInstanceUID}.dcm"
            if "SOPInstanceUID" in ds
            else f"{subject}/{self.uids(str(id(ds)))}.dcm"
        )
        result.actions = Counter({ACTION_NAMES[k]: v for k, v in ctx.counts.items()})
        if self.verify:
            self._verify(ds, ctx, profile, result)
        else:
            from ciams.deid.writer import serialize_parts

            result.parts = serialize_parts(ds)
        return result

    def _match_values(self, ds: Dataset) -> dict[str, str]:
        def number(tag: int) -> str:
            return str(ds[tag].value) if tag in ds else ""

        return self._match_values_from(lambda tag: _text(ds, tag), number)

    def _match_values_from(
        self, text: Callable[[int], str | None], number: Callable[[int], str]
    ) -> dict[str, str]:
        """The values recipe rules match on (site, Manufacturer, Model, size, ...)."""
        values = {"site": self.site}
        if not self.recipe.rules and not self.recipe.regions:
            return values
        for key, tag in MATCH_KEYS.items():
            if tag is None:
                continue
            values[key] = number(tag) if key in ("Rows", "Columns") else (text(tag) or "")
        return values

    def deidentify_file(
        self, path: str, *, accept: Callable[[Dataset], None] | None = None
    ) -> DeidResult:
        """De-identify the DICOM file at ``path`` (see :meth:`deidentify_bytes`).

        On the fast path a large Pixel Data value is not read: the result refers to
        it and :func:`ciams.deid.batch.run_batch` copies it file to file.
        """
        fast = self._fast.run_file(path)
        if fast is None:
            with open(path, "rb") as fh:
                return self.deidentify_bytes(fh.read(), accept=accept)
        return self._from_fast(fast)

    def deidentify_bytes(
        self, data: bytes, *, accept: Callable[[Dataset], None] | None = None
    ) -> DeidResult:
        """De-identify the DICOM file ``data``; the byte-level fast path when it applies.

        Same results as ``deidentify(dcmread(data))`` (tests compare the bytes), faster
        for the common Explicit VR Little Endian files; anything else is read with
        pydicom and goes through :meth:`deidentify`; ``accept`` may refuse such a
        dataset (by raising) before anything is done to it.
        """
        fast = self._fast.run(data)
        if fast is None:
            from ciams.deid.reader import read_fast

            ds = read_fast(data)
            if accept is not None:
                accept(ds)
            return self.deidentify(ds)
        return self._from_fast(fast)

    def _from_fast(self, fast: FastResult) -> DeidResult:
        header, pixel, filename, subject, new, counts, identifiers, profile, text = fast
        result = DeidResult(None, filename, subject, new, parts=(header, pixel), actions=counts)
        if self.verify:
            scanner = LeakScanner(
                identifiers,
                patterns=self.recipe.leak_patterns,
                ignore=self._verify_ignore(subject),
                dates_shifted=Option.RETAIN_LONG_MODIFIED_DATES in profile.options,
            )
            if scanner.scan_bytes(header, text):
                leaks = scanner.locate(result.dataset)
                if leaks:
                    self._raise_leaks(result, leaks)
        return result

    def _walk(self, ds: Dataset, profile: CompiledProfile, ctx: _Context) -> None:
        actions = profile.actions
        vrs = profile.vrs
        ident = profile.identifying
        counts = ctx.counts
        for tag in list(ds.keys()):
            t = int(tag)
            act = actions.get(t)
            if act is None:
                act = self._private_or_unknown(ds, t, profile)
            counts[act] += 1
            if act == KEEP:
                continue
            elem = ds.get_item(tag)
            vr = elem.VR
            if vr is None or vr == "UN":  # implicit VR, or explicit UN for a known tag
                vr = vrs.get(t) or "UN"
            if t in ident and vr != "SQ":
                raw = value_bytes(elem)
                if raw:
                    for tok, comp in identifier_tokens(t, vr, raw):
                        ctx.identifiers.setdefault(tok, (t, comp))
            if act == REMOVE:
                if vr == "SQ" or (
                    vr == "UN" and isinstance(elem, RawDataElement) and elem.value is None
                ):
                    self._collect(ds[tag].value if vr == "SQ" else [], profile, ctx)
                del ds[tag]
            elif act in (RECURSE, DUMMY_SQ):
                seq = ds[tag].value
                if act == DUMMY_SQ and any(
                    CODE_VALUE in item or CODE_MEANING in item or LONG_CODE_VALUE in item
                    for item in seq
                ):
                    self._collect(seq, profile, ctx)
                    ds[tag] = DataElement(t, "SQ", Sequence([_dummy_code()]))
                else:
                    for item in seq:
                        self._walk(item, profile, ctx)
            elif act == EMPTY:
                if vr == "SQ":
                    self._collect(ds[tag].value, profile, ctx)
                    ds[tag] = DataElement(t, "SQ", Sequence())
                else:
                    ds[tag] = DataElement(t, vr, None)
            elif act == UID:
                raw = value_bytes(elem)
                if raw:
                    new = self.uids.map_value(raw.decode("ascii", "replace"))
                    ds[tag] = DataElement(t, "UI", new)
            elif act == SUBJECT:
                ds[tag] = DataElement(t, vr, ctx.subject)
            elif act == SHIFT:
                self._shift(ds, t, vr, elem, ctx.days)
            elif act == CLEAN:
                ctx.to_clean.append((ds, t, vr))
            elif act == DUMMY:
                if vr == "SQ":
                    for item in ds[tag].value:
                        self._walk(item, profile, ctx)
                else:
                    ds[tag] = DataElement(t, vr, DUMMIES.get(vr, b"\0\0"))

    def _private_or_unknown(self, ds: Dataset, t: int, profile: CompiledProfile) -> int:
        group = t >> 16
        if group & 1 and profile.safe_private:
            elem_no = t & 0xFFFF
            if 0x10 <= elem_no <= 0xFF:  # a private creator: kept if its block keeps anything
                creator = str(ds[t].value).strip().upper()
                return (
                    KEEP
                    if any(c == creator and (k >> 8) == group for c, k in profile.safe_private)
                    else REMOVE
                )
            if elem_no >= 0x1000:
                creator_elem = ds.get((group, elem_no >> 8))
                creator = str(creator_elem.value).strip().upper() if creator_elem else ""
                if (creator, group << 8 | (elem_no & 0xFF)) in profile.safe_private:
                    return KEEP
            return REMOVE
        act = profile.action(t)
        if act == KEEP and (0x6000 <= group <= 0x601E or 0x5000 <= group <= 0x501E):
            vr = ds.get_item(t).VR
            if vr in ("LO", "SH", "ST", "LT", "UT"):
                # overlay/curve comments, descriptions and labels are free text (E.3.3)
                return CLEAN if Option.CLEAN_GRAPHICS in profile.options else REMOVE
        return act

    def _collect(
        self, items: Sequence | list[Dataset], profile: CompiledProfile, ctx: _Context
    ) -> None:
        """Record identifying values inside a sequence being removed or replaced."""
        for item in items:
            for tag in list(item.keys()):
                t = int(tag)
                elem = item.get_item(tag)
                vr = elem.VR if elem.VR not in (None, "UN") else profile.vrs.get(t) or "UN"
                if vr == "SQ":
                    self._collect(item[tag].value, profile, ctx)
                elif t in profile.identifying:
                    raw = value_bytes(elem)
                    if raw:
                        for tok, comp in identifier_tokens(t, vr, raw):
                            ctx.identifiers.setdefault(tok, (t, comp))

    def _shift(
        self, ds: Dataset, t: int, vr: str, elem: DataElement | RawDataElement, days: int
    ) -> None:
        raw = value_bytes(elem)
        if not raw:
            return
        text = raw.decode("ascii", "replace").strip("\0 ")
        if vr == "DA":
            ds[t] = DataElement(t, "DA", shift_da(text, days) or None)
        elif vr == "DT":
            ds[t] = DataElement(t, "DT", shift_dt(text, days) or None)
        # TM: a shift by whole days leaves times of day unchanged

    def _clean(self, ds: Dataset, t: int, vr: str, ctx: _Context) -> None:
        """C on text: kept only when made of safe vocabulary, else emptied (see
        :func:`ciams.deid.safe.clean_text`)."""
        elem = ds[t]
        value = elem.value
        if value is None or isinstance(value, bytes | Sequence):
            if isinstance(value, bytes) and value:
                ds[t] = DataElement(t, vr, None)
            return
        text = (
            "\\".join(str(v) for v in value)
            if not isinstance(value, str) and hasattr(value, "__iter__")
            else str(value)
        )
        if clean_text(text, ctx.identifiers, self.vocabulary) != text:
            ds[t] = DataElement(t, vr, None)

    def _pixels(
        self,
        ds: Dataset,
        values: dict[str, str],
        burned_in: str | None,
        rules: tuple[Rule, ...],
        result: DeidResult,
    ) -> bool:
        regions = [
            (rule.name, reg)
            for rule in (*rules, *self.recipe.matching_regions(values))
            for reg in rule.regions
        ]
        ocr = pixel_ops.wants_ocr(ds, self.recipe, burned_in, rules)
        if not regions and not ocr:
            return False
        boxes = pixel_ops.redact(ds, regions, ocr=ocr, recipe=self.recipe)
        result.redactions.extend(Redaction(*b) for b in boxes)
        return True

    def _stamp(
        self, ds: Dataset, profile: CompiledProfile, subject: str, pixel_cleaned: bool
    ) -> None:
        """De-identification attributes (PS3.3 C.7.1.1) and regenerated file meta."""
        subject_elems = self._subject_elems.get(subject)
        if subject_elems is None:
            subject_elems = (
                DataElement(0x00100010, "PN", subject),
                DataElement(0x00100020, "LO", subject),
            )
            if len(self._subject_elems) < 10_000:
                self._subject_elems[subject] = subject_elems
        for elem in subject_elems:
            ds[elem.tag] = copy.copy(elem)
        key = (profile.options, pixel_cleaned)
        stamps = self._stamps.get(key)
        if stamps is None:
            stamps = self._stamps[key] = self._make_stamps(profile, pixel_cleaned)
        for elem in stamps:  # built once per option set; copied so callers may edit them
            ds[elem.tag] = copy.copy(elem)
        trial = self.recipe.trial
        if trial.get("sponsor") and trial.get("protocol_id"):
            ds.ClinicalTrialSponsorName = trial["sponsor"][:64]
            ds.ClinicalTrialProtocolID = trial["protocol_id"][:64]
            ds.ClinicalTrialProtocolName = trial.get("protocol_name", "")[:64] or None
            ds.ClinicalTrialSiteID = (self.site or trial.get("site_id", ""))[:64] or None
            ds.ClinicalTrialSiteName = None
            ds.ClinicalTrialSubjectID = subject
        self._file_meta(ds)

    def stamp_spec(self, profile: CompiledProfile, pixel_cleaned: bool) -> list[Stamp]:
        """The attributes every output gets (PS3.3 C.7.1.1, CID 7050), as plain values:
        ``(tag, VR, value)``; a sequence's value is a list of ``(code, scheme, meaning)``."""
        codes = ["basic", *sorted(profile.options)]
        spec: list[Stamp] = [(0x00120062, "CS", "YES"), (0x00120063, "LO", list(self._method))]
        if pixel_cleaned:
            codes.insert(1, "clean_pixel_data")
            spec.append((BURNED_IN, "CS", "NO"))
        items = [(OPTION_CODES[k][0], "DCM", OPTION_CODES[k][1][:64]) for k in codes]
        spec.append((0x00120064, "SQ", items))
        if Option.RETAIN_LONG_MODIFIED_DATES in profile.options:
            modified = "MODIFIED"
        elif Option.RETAIN_LONG_FULL_DATES in profile.options:
            modified = "UNMODIFIED"
        else:
            modified = "REMOVED"
        spec.append((0x00280303, "CS", modified))
        return sorted(spec)

    def _make_stamps(self, profile: CompiledProfile, pixel_cleaned: bool) -> list[DataElement]:
        from pydicom import Dataset
        from pydicom.dataelem import DataElement
        from pydicom.sequence import Sequence

        stamps = []
        for tag, vr, value in self.stamp_spec(profile, pixel_cleaned):
            if vr == "SQ":
                items = []
                for code, scheme, meaning in cast("list[tuple[str, str, str]]", value):
                    item = Dataset()
                    item.CodeValue = code
                    item.CodingSchemeDesignator = scheme
                    item.CodeMeaning = meaning
                    items.append(item)
                stamps.append(DataElement(tag, "SQ", Sequence(items)))
            else:
                stamps.append(DataElement(tag, vr, value))
        return stamps

    def _file_meta(self, ds: Dataset) -> None:
        old = getattr(ds, "file_meta", None)
        syntax = old.get("TransferSyntaxUID") if old is not None else None
        if syntax is None:
            implicit, little = getattr(ds, "original_encoding", (None, None))
            if implicit is True:
                syntax = ImplicitVRLittleEndian
            elif little is False:
                syntax = ExplicitVRBigEndian
            else:
                syntax = ExplicitVRLittleEndian
        first = ds.get_item(next(iter(ds.keys()))) if len(ds) else None
        implicit = isinstance(first, RawDataElement) and first.is_implicit_VR
        if implicit and not syntax.is_implicit_VR:
            for _ in ds.iterall():  # decode raw implicit elements so they get their VR
                pass
        sop_class = ds.get("SOPClassUID") or "1.2.840.10008.5.1.4.1.1.7"
        sop_instance = ds.get("SOPInstanceUID") or self.uids(str(id(ds)))
        meta = pixel_ops.new_file_meta()
        for elem in (
            DataElement(0x00020001, "OB", b"\x00\x01"),
            DataElement(0x00020002, "UI", sop_class),
            DataElement(0x00020003, "UI", sop_instance),
            DataElement(0x00020010, "UI", syntax),
            DataElement(0x00020012, "UI", IMPLEMENTATION_UID),
            DataElement(0x00020013, "SH", IMPLEMENTATION_VERSION),
        ):
            meta[elem.tag] = elem
        ds.file_meta = meta

    def _verify(
        self, ds: Dataset, ctx: _Context, profile: CompiledProfile, result: DeidResult
    ) -> None:
        scanner = LeakScanner(
            ctx.identifiers,
            patterns=self.recipe.leak_patterns,
            ignore=self._verify_ignore(ctx.subject),
            dates_shifted=Option.RETAIN_LONG_MODIFIED_DATES in profile.options,
        )
        from ciams.deid.writer import serialize_parts

        header, pixel = serialize_parts(ds)
        result.parts = (header, pixel)
        if scanner.scan_bytes(header):
            leaks = scanner.locate(ds)
            if leaks:
                self._raise_leaks(result, leaks)

    def _verify_ignore(self, subject: str) -> list[bytes]:
        """Values the engine writes itself: never leaks."""
        return [
            subject.encode(),
            *(v.encode() for v in self._method),
            IMPLEMENTATION_UID.encode(),
            IMPLEMENTATION_VERSION.encode(),
        ]

    @staticmethod
    def _raise_leaks(result: DeidResult, leaks: list[Leak]) -> None:
        result.leaks = leaks
        exc = LeakDetectedError(
            f"identifying values remain after de-identification: "
            f"{'; '.join(str(x) for x in leaks[:5])}",
            leaks,
        )
        exc.result = result  # type: ignore[attr-defined]
        raise exc


def _text(ds: Dataset, tag: int) -> str | None:
    if tag not in ds:
        return None
    raw = value_bytes(ds.get_item(tag))
    if not raw:
        return None
    return raw.decode("ascii", "replace").strip("\0 ") or None


def _dummy_code() -> Dataset:
    item = Dataset()
    item.CodeValue = "ANON"
    item.CodingSchemeDesignator = "99CIAMS"
    item.CodeMeaning = "anonymized"
    return item
