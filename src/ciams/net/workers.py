"""Extra DICOM listener processes (``dicom.workers``), sharing the server's port.

pynetdicom handles every association in Python threads of one process, so one process
uses about one core. With ``dicom.workers = N`` the server starts N-1 more processes
that listen on the same port (SO_REUSEPORT); each has its own archive handle and index
writer on the shared data folder and database, and only enqueues background tasks
(the main process consumes them).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from multiprocessing.process import BaseProcess
from typing import Any

from ciams.config import Settings

log = logging.getLogger(__name__)


def _run(settings_data: dict[str, Any], ready: Any) -> None:
    from ciams.net.server import DicomServer
    from ciams.server import open_archive
    from ciams.tasks import TaskRunner

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    settings = Settings(**settings_data)
    archive = open_archive(settings)
    TaskRunner(settings, archive)  # producer only: registers the post-commit listener
    dicom = DicomServer(archive, settings)
    try:
        dicom.start()
        ready.set()
        stop.wait()
    finally:
        dicom.stop()
        archive.close()


class DicomWorkers:
    """Starts and stops the extra listener processes."""

    def __init__(self, settings: Settings, port: int) -> None:
        data = settings.model_dump(mode="json")
        data["dicom"]["port"] = port  # the port the main process bound (maybe ephemeral)
        self._data = data
        self._count = settings.dicom.workers - 1
        self._procs: list[BaseProcess] = []

    def start(self, timeout: float = 60) -> None:
        """Start the workers; returns once each one listens."""
        ctx = multiprocessing.get_context("spawn")
        for _ in range(self._count):
            ready = ctx.Event()
            proc = ctx.Process(target=_run, args=(self._data, ready), daemon=True)
            proc.start()
            self._procs.append(proc)
            if not ready.wait(timeout):
                self.stop()
                raise RuntimeError("a DICOM worker process did not start")
        if self._procs:
            log.info("%d extra DICOM listener processes", len(self._procs))

    def stop(self) -> None:
        """Ask the workers to finish their associations and exit."""
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        self._procs.clear()
