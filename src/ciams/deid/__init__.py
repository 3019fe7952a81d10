"""De-identification for CIAMS: PS3.15 Annex E profiles, trial recipes, leak guard.

Public API::

    from ciams.deid import Deidentifier, default_recipe, load_recipe
    deid = Deidentifier(default_recipe(), {"MRN123": "LOCAT-0001"}, secret)
    result = deid.deidentify(ds)        # DeidResult: dataset, filename, data, redactions
    scan_for_leaks(source_ds, result.dataset)   # [] when clean
    check_ingest(ds, recipe)            # raises NotDeidentifiedError
"""

from ciams.deid._standard.annex_e import EDITION as STANDARD_EDITION
from ciams.deid.engine import Deidentifier, DeidResult, Redaction
from ciams.deid.errors import (
    Leak,
    LeakDetectedError,
    NotDeidentifiedError,
    PixelRedactionError,
    RecipeError,
    UnknownSubjectError,
)
from ciams.deid.leaks import check_ingest, scan_for_leaks
from ciams.deid.profile import CompiledProfile, Option, compile_profile
from ciams.deid.recipe import (
    Recipe,
    Region,
    Rule,
    default_recipe,
    load_recipe,
    recipe_from_text,
    recipe_with_defaults,
)
from ciams.deid.subjects import load_subjects

__all__ = [
    "STANDARD_EDITION",
    "CompiledProfile",
    "DeidResult",
    "Deidentifier",
    "Leak",
    "LeakDetectedError",
    "NotDeidentifiedError",
    "Option",
    "PixelRedactionError",
    "Recipe",
    "RecipeError",
    "Redaction",
    "Region",
    "Rule",
    "UnknownSubjectError",
    "check_ingest",
    "compile_profile",
    "default_recipe",
    "load_recipe",
    "load_subjects",
    "recipe_from_text",
    "recipe_with_defaults",
    "scan_for_leaks",
]
