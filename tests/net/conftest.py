"""Fixtures for the DIMSE tests: a running node and dcmtk tools as real peers."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
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


def _web_available() -> bool:
    try:
        from ciams.web import create_app  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def make_node(
    make_settings: Callable[..., Settings], request: pytest.FixtureRequest
) -> Iterator[Callable[..., DicomNode]]:
    """Start a server on loopback: the full ``Server`` (the ``make_server`` fixture) when
    the web app exists, else the archive with the DICOM listener alone."""
    stops: list[Callable[[], None]] = []

    def factory(**overrides: Any) -> DicomNode:
        if _web_available():
            make_server = request.getfixturevalue("make_server")
            server = make_server(**overrides)
            return DicomNode(server.settings, server.dicom_port, server.archive, server.dicom)
        settings = make_settings(**overrides)
        archive = Archive(settings)
        dicom = DicomServer(archive, settings)
        port = dicom.start()

        def stop() -> None:
            dicom.stop()
            archive.close()

        stops.append(stop)
        return DicomNode(settings, port, archive, dicom)

    yield factory
    for stop in stops:
        stop()


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
