"""Shared fixtures for the de-identification tests."""

from __future__ import annotations

import io
import shutil

import pydicom
import pytest
from pydicom import Dataset

from ciams.deid import Deidentifier, Recipe, default_recipe, recipe_from_text
from ciams.deid.writer import serialize

SECRET = b"test-trial-secret-0123456789"


def roundtrip(ds: Dataset) -> Dataset:
    """Write and read back, so tests see raw elements as real input does."""
    return pydicom.dcmread(io.BytesIO(serialize(ds)))


def recipe_with(extra: str, base: str = "default") -> Recipe:
    """A recipe from YAML text (options given explicitly)."""
    header = 'recipe: 1\nname: test\nversion: "1"\n'
    return recipe_from_text(header + extra)


@pytest.fixture
def deid() -> Deidentifier:
    return Deidentifier(
        default_recipe(), {"MRN0001": "LOCAT-0001", "MRN0002": "LOCAT-0002"}, SECRET
    )


@pytest.fixture
def basic_recipe() -> Recipe:
    return recipe_with("profile: {options: []}\n")


requires_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract-ocr is not installed"
)
requires_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) is not installed"
)
