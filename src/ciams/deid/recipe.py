"""Trial recipes: which profile options, overrides and pixel rules a trial applies.

A recipe is a versioned YAML file (see ``data/default.yaml`` and docs/deid.md).
Its name, version and a digest of its content are written into every output
instance (De-identification Method (0012,0063)), so each file says exactly which
rules produced it.  Per-site and per-scanner rules are matched on the site code and
on Manufacturer / Manufacturer's Model Name / Software Versions / Modality / image
size; they add attributes to remove or keep and pixel regions to blank.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ciams.deid.errors import RecipeError
from ciams.deid.profile import Option, parse_tags

#: Attributes a rule's ``match`` may name (plus ``site``); values are glob patterns.
MATCH_KEYS = {
    "site": None,
    "Manufacturer": 0x00080070,
    "ManufacturerModelName": 0x00081090,
    "SoftwareVersions": 0x00181020,
    "Modality": 0x00080060,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "SOPClassUID": 0x00080016,
}
OCR_MODES = ("auto", "always", "never")
DEFAULT_OCR_MODALITIES = ("US", "SC", "XA", "RF", "OT", "DX", "CR", "ES", "XC", "DOC")


@dataclass(frozen=True)
class Region:
    """A rectangle of pixels to blank, in pixel coordinates of the stored image."""

    x: int
    y: int
    width: int
    height: int

    @classmethod
    def parse(cls, raw: Any) -> Region:
        if isinstance(raw, Mapping):
            vals = [raw.get(k) for k in ("x", "y", "width", "height")]
        else:
            vals = list(raw) if isinstance(raw, list | tuple) else []
        ints = [v for v in vals if isinstance(v, int) and not isinstance(v, bool) and v >= 0]
        if len(vals) != 4 or len(ints) != 4:
            raise RecipeError(f"bad pixel region {raw!r}", hint="write [x, y, width, height]")
        return cls(ints[0], ints[1], ints[2], ints[3])


@dataclass(frozen=True)
class Rule:
    """A per-site / per-scanner rule."""

    name: str
    match: dict[str, str]
    keep: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    regions: tuple[Region, ...] = ()
    ocr: bool | None = None

    def matches(self, values: Mapping[str, str]) -> bool:
        return all(
            fnmatch.fnmatchcase(values.get(key, "").upper(), pattern.upper())
            for key, pattern in self.match.items()
        )


@dataclass(frozen=True)
class Recipe:
    """A parsed trial recipe (immutable; build with :func:`load_recipe`)."""

    name: str
    version: str
    options: tuple[str, ...]
    keep: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    keep_overlays: bool = False
    keep_curves: bool = False
    safe_private: tuple[tuple[str, int], ...] = ()
    unknown_subject: str = "refuse"
    subject_prefix: str = "SUBJ-"
    subject_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
    uid_root: str = "2.25"
    date_shift_days: tuple[int, int] = (-1095, -30)
    ocr: str = "auto"
    ocr_modalities: tuple[str, ...] = DEFAULT_OCR_MODALITIES
    ocr_min_confidence: float = 0.0
    ocr_all_frames: bool = False
    regions: tuple[Rule, ...] = ()
    rules: tuple[Rule, ...] = ()
    leak_patterns: dict[str, str] = field(default_factory=dict)
    #: words a cleaned text value may hold besides :data:`ciams.deid.safe.SAFE_VOCABULARY`
    vocabulary: tuple[str, ...] = ()
    trial: dict[str, str] = field(default_factory=dict)
    require_deidentified_on_ingest: bool = True
    digest: str = ""

    @property
    def label(self) -> str:
        """``name vVERSION #digest`` as recorded in the output."""
        return f"{self.name} v{self.version}" + (f" #{self.digest[:12]}" if self.digest else "")

    def matching_rules(self, values: Mapping[str, str]) -> tuple[Rule, ...]:
        """The per-site / per-scanner rules that apply to an instance."""
        return tuple(r for r in self.rules if r.matches(values))

    def matching_regions(self, values: Mapping[str, str]) -> tuple[Rule, ...]:
        """The pixel region rules (``pixels.regions``) that apply to an instance."""
        return tuple(r for r in self.regions if r.matches(values))


_TOP_KEYS = {
    "recipe",
    "name",
    "version",
    "profile",
    "keep",
    "remove",
    "subjects",
    "uids",
    "dates",
    "pixels",
    "rules",
    "leak_patterns",
    "vocabulary",
    "trial",
    "ingest",
    "safe_private",
}


def _strs(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise RecipeError(f"{where} must be a list of attribute keywords or tags")
    out = tuple(str(v) for v in value)
    parse_tags(out)  # validate now, not at the first file
    return out


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{where} must be a mapping")
    unknown = set(raw) - {"name", "match", "keep", "remove", "regions", "ocr"}
    if unknown:
        raise RecipeError(f"{where}: unknown keys {sorted(unknown)}")
    match = raw.get("match") or {}
    if not isinstance(match, Mapping) or set(match) - set(MATCH_KEYS):
        raise RecipeError(f"{where}.match may only use {sorted(MATCH_KEYS)}")
    return Rule(
        name=str(raw.get("name", where)),
        match={str(k): str(v) for k, v in match.items()},
        keep=_strs(raw.get("keep"), f"{where}.keep"),
        remove=_strs(raw.get("remove"), f"{where}.remove"),
        regions=tuple(Region.parse(r) for r in raw.get("regions") or ()),
        ocr=raw.get("ocr"),
    )


def parse_recipe(data: Mapping[str, Any], *, digest: str = "") -> Recipe:
    """Validate a recipe mapping (as loaded from YAML) and build a :class:`Recipe`."""
    if not isinstance(data, Mapping):
        raise RecipeError("a recipe must be a YAML mapping")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise RecipeError(f"unknown recipe keys {sorted(unknown)}")
    if data.get("recipe", 1) != 1:
        raise RecipeError(
            f"unsupported recipe format {data.get('recipe')!r}", hint="use 'recipe: 1'"
        )
    for key in ("name", "version"):
        if not isinstance(data.get(key), str | int | float) or not str(data.get(key)).strip():
            raise RecipeError(f"the recipe needs a '{key}'")
    profile = data.get("profile") or {}
    options = tuple(profile.get("options") or ())
    for opt in options:
        if opt not in {o.value for o in Option}:
            raise RecipeError(
                f"unknown profile option {opt!r}",
                hint="options: " + ", ".join(o.value for o in Option),
            )
    subjects = data.get("subjects") or {}
    unknown_subject = subjects.get("unknown", "refuse")
    if unknown_subject not in ("refuse", "generate"):
        raise RecipeError("subjects.unknown must be 'refuse' or 'generate'")
    pattern = str(subjects.get("pattern", Recipe.subject_pattern))
    try:
        re.compile(pattern)
    except re.error as exc:
        raise RecipeError(f"subjects.pattern is not a regular expression: {exc}") from exc
    dates = data.get("dates") or {}
    lo, hi = int(dates.get("min_days", -1095)), int(dates.get("max_days", -30))
    if lo > hi or (lo == 0 and hi == 0):
        raise RecipeError("dates.min_days must be <= dates.max_days and not both 0")
    pixels = data.get("pixels") or {}
    ocr = str(pixels.get("ocr", "auto"))
    if ocr not in OCR_MODES:
        raise RecipeError(f"pixels.ocr must be one of {OCR_MODES}")
    leak_patterns = {str(k): str(v) for k, v in (data.get("leak_patterns") or {}).items()}
    for name, pat in leak_patterns.items():
        try:
            re.compile(pat.encode())
        except re.error as exc:
            raise RecipeError(f"leak pattern {name!r} is invalid: {exc}") from exc
    vocabulary = data.get("vocabulary") or []
    if not isinstance(vocabulary, list) or not all(
        isinstance(w, str | int) and re.fullmatch(r"[^\W_]+", str(w)) for w in vocabulary
    ):
        raise RecipeError(
            "vocabulary must be a list of words (letters and digits only)",
            hint="a value is split into words at every other character: list the words",
        )
    safe_private = []
    for entry in data.get("safe_private") or ():
        try:
            creator, group, element = (
                entry["creator"],
                int(str(entry["group"]), 16),
                int(str(entry["element"]), 16),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecipeError("safe_private entries need creator, group and element (hex)") from exc
        safe_private.append((str(creator), group << 8 | (element & 0xFF)))
    return Recipe(
        name=str(data["name"]),
        version=str(data["version"]),
        options=options,
        keep=_strs(data.get("keep"), "keep"),
        remove=_strs(data.get("remove"), "remove"),
        keep_overlays=bool(pixels.get("keep_overlays", False)),
        keep_curves=bool(pixels.get("keep_curves", False)),
        safe_private=tuple(safe_private),
        unknown_subject=unknown_subject,
        subject_prefix=str(subjects.get("prefix", "SUBJ-")),
        subject_pattern=pattern,
        uid_root=str((data.get("uids") or {}).get("root", "2.25")),
        date_shift_days=(lo, hi),
        ocr=ocr,
        ocr_modalities=tuple(pixels.get("ocr_modalities") or DEFAULT_OCR_MODALITIES),
        ocr_min_confidence=float(pixels.get("ocr_min_confidence", 0.0)),
        ocr_all_frames=bool(pixels.get("ocr_all_frames", False)),
        regions=tuple(
            _rule(r, f"pixels.regions[{i}]") for i, r in enumerate(pixels.get("regions") or ())
        ),
        rules=tuple(_rule(r, f"rules[{i}]") for i, r in enumerate(data.get("rules") or ())),
        leak_patterns=leak_patterns,
        vocabulary=tuple(str(w).upper() for w in vocabulary),
        trial={str(k): str(v) for k, v in (data.get("trial") or {}).items()},
        require_deidentified_on_ingest=bool(
            (data.get("ingest") or {}).get("require_deidentified", True)
        ),
        digest=digest,
    )


def recipe_from_text(text: str) -> Recipe:
    """Parse recipe YAML text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"the recipe is not valid YAML: {exc}") from exc
    return parse_recipe(data, digest=hashlib.sha256(text.encode()).hexdigest())


def recipe_with_defaults(overrides: Mapping[str, Any]) -> Recipe:
    """The default recipe with top-level sections replaced or merged (for tools and tests)."""
    text = resources.files("ciams.deid").joinpath("data/default.yaml").read_text("utf-8")
    data = dict(yaml.safe_load(text))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), Mapping):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    dumped = yaml.safe_dump(data, sort_keys=True)
    return parse_recipe(data, digest=hashlib.sha256(dumped.encode()).hexdigest())


def load_recipe(path: Path | str) -> Recipe:
    """Load and validate a recipe file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {p}: {exc.strerror}") from exc
    return recipe_from_text(text)


def default_recipe() -> Recipe:
    """Basic Profile + Retain Patient Characteristics + Modified Dates + Clean Descriptors."""
    text = resources.files("ciams.deid").joinpath("data/default.yaml").read_text("utf-8")
    return recipe_from_text(text)
