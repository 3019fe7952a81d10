"""The central ingest guard: identified data never enters a trial that forbids it.

The archive calls the guard for every instance before storing it; for an instance of
a trial whose recipe requires de-identification (``deid.trial_recipes`` maps trial
codes to recipe files, ``"*"`` for every trial), :func:`check_ingest` refuses it with
the reasons, and the archive quarantines it and tells the sender.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ciams.deid.leaks import check_ingest
from ciams.deid.recipe import Recipe, load_recipe

Guard = Callable[[Any, dict[str, str]], None]


def ingest_guard(trial_recipes: Mapping[str, Path]) -> Guard | None:
    """A guard for :meth:`ciams.archive.Archive.add_guard`, None when no trial needs one.

    Recipes are loaded once here, so a broken recipe stops the server at start-up
    rather than refusing every upload later.
    """
    recipes: dict[str, Recipe] = {
        trial: load_recipe(Path(path)) for trial, path in trial_recipes.items()
    }
    if not recipes:
        return None

    def guard(parsed: Any, source: dict[str, str]) -> None:
        recipe = recipes.get(source.get("trial", "")) or recipes.get("*")
        if recipe is not None:
            check_ingest(parsed.dataset, recipe)

    return guard
