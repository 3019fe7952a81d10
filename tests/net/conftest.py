"""Fixtures for the DIMSE tests: a running node and dcmtk tools as real peers."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ciams.archive import Archive
from ciams.config import Settings
from ciams.net import DicomServer


@dataclass
class DicomNode:
    """What the tests need of a running server: its settings, DICOM port and archive."""

    settings: Settings
    dicom_port: int
    archive: Archive
    dicom: DicomServer

    @property
    def ae_title(self) -> str:
        return self.settings.dicom.ae_title


@pytest.fixture
def make_node(make_server: Callable[..., Any]) -> Callable[..., DicomNode]:
    """Start a full server on loopback (the ``make_server`` fixture) as a DICOM node."""

    def factory(**overrides: Any) -> DicomNode:
        server = make_server(**overrides)
        return DicomNode(server.settings, server.dicom_port, server.archive, server.dicom)

    return factory


@pytest.fixture
def node(make_node: Callable[..., DicomNode]) -> DicomNode:
    return make_node()


def dcmtk(
    *args: str | Path, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool; TCP_NODELAY=1 makes dcmtk disable Nagle on its sockets."""
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )
