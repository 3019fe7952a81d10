"""Extra DICOM processes (``dicom.workers``) serving associations the main process accepts.

pynetdicom handles every association in Python threads of one process, so one process
uses about one core. With ``dicom.workers = N`` the server starts N-1 more processes;
the main process accepts each association and hands it, round-robin, to itself or to a
worker over a Unix socket (the connection's descriptor travels with SCM_RIGHTS). Each
worker has its own archive handle and index writer on the shared data folder and
database, and only enqueues background tasks (the main process consumes them).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
from multiprocessing.process import BaseProcess
from typing import Any

from ciams.config import Settings

log = logging.getLogger(__name__)


def _run(settings_data: dict[str, Any], channel: socket.socket, ready: Any) -> None:
    from ciams.net.server import DicomServer, receive_associations
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
        dicom.start()  # on a private ephemeral loopback port: connections come by channel
        server = dicom.server
        assert server is not None
        receiver = threading.Thread(
            target=receive_associations,
            args=(server, channel),
            name="ciams-dicom-receiver",
            daemon=True,
        )
        receiver.start()
        ready.set()
        stop.wait()
    finally:
        channel.close()
        dicom.stop()
        archive.close()


class DicomWorkers:
    """Starts and stops the extra DICOM processes and holds the channels to them."""

    def __init__(self, settings: Settings) -> None:
        data = settings.model_dump(mode="json")
        data["dicom"]["host"] = "127.0.0.1"
        data["dicom"]["port"] = 0  # a worker accepts nothing itself
        self._data = data
        self._count = settings.dicom.workers - 1
        self._pairs = [
            socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(self._count)
        ]
        self._procs: list[BaseProcess] = []

    @property
    def channels(self) -> list[socket.socket]:
        """The main process's ends of the channels, one per worker."""
        return [ours for ours, _ in self._pairs]

    def start(self, timeout: float = 60) -> None:
        """Start the workers; returns once each one serves."""
        ctx = multiprocessing.get_context("spawn")
        for _, theirs in self._pairs:
            ready = ctx.Event()
            # multiprocessing hands the channel's descriptor to the child.
            proc = ctx.Process(target=_run, args=(self._data, theirs, ready), daemon=True)
            proc.start()
            self._procs.append(proc)
            if not ready.wait(timeout):
                self.stop()
                raise RuntimeError("a DICOM worker process did not start")
        for _, theirs in self._pairs:
            theirs.close()  # the children hold their ends now
        if self._procs:
            log.info("%d extra DICOM processes", len(self._procs))

    def stop(self) -> None:
        """Ask the workers to finish their associations and exit."""
        for ours, _ in self._pairs:
            ours.close()
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        self._procs.clear()
