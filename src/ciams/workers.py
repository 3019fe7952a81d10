"""Worker processes of the server (``dicom.workers``, ``http.workers``).

pynetdicom serves every association in Python threads of one process, and uvicorn
every request in one event loop, so one process uses about one core. With
``dicom.workers = N`` or ``http.workers = M`` the server starts max(N, M) - 1 more
processes:

* DICOM: the main process accepts each association and hands it, round-robin, to
  itself or to one of the first N - 1 workers over a Unix socket (the connection's
  descriptor travels with SCM_RIGHTS); the TLS handshake happens where it is served.
* HTTP: the first M - 1 workers run the same web application, each on its own socket
  bound to the main process's port with ``SO_REUSEPORT``; the kernel picks a process
  per connection by a hash of the client's address and port, so many clients even out
  but a few may share one process (four benchmark clients split 4:0 or 3:1 in 3 of 5
  starts; STOW-RS throughput did not depend on the split).

Each worker has its own archive handle on the shared data folder and database, and
only enqueues background tasks (the main process consumes them).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ciams.config import Settings

log = logging.getLogger(__name__)


def _run(
    settings_data: dict[str, Any],
    channel: socket.socket | None,
    http_address: tuple[str, int] | None,
    dicom_port: int,
    ready: Connection,
    parent: int,
) -> None:
    from ciams.net.server import DicomServer, receive_associations
    from ciams.server import bind_http, open_archive, uvicorn_server
    from ciams.tasks import TaskRunner

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    threading.Thread(
        target=_stop_when_orphaned, args=(parent, stop), name="ciams-parent", daemon=True
    ).start()
    settings = Settings(**settings_data)
    archive = open_archive(settings)
    TaskRunner(settings, archive)  # producer only: registers the post-commit listener
    dicom = DicomServer(archive, settings) if channel is not None else None
    http = None
    http_thread = None
    http_sock = None
    try:
        if dicom is not None and channel is not None:
            dicom.start()  # on a private ephemeral loopback port: connections come by channel
            assert dicom.server is not None
            threading.Thread(
                target=receive_associations,
                args=(dicom.server, channel),
                name="ciams-dicom-receiver",
                daemon=True,
            ).start()
        if http_address is not None:
            from ciams.web import create_app

            http_sock = bind_http(*http_address, shared=True)
            app = create_app(archive, settings)
            app.state.dicom_port = dicom_port
            http = uvicorn_server(app, settings)
            http_thread = threading.Thread(
                target=http.run, kwargs={"sockets": [http_sock]}, name="ciams-http", daemon=True
            )
            http_thread.start()
            deadline = time.monotonic() + 30
            while not http.started and http_thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        # A pipe, not a multiprocessing Event: Event.set() blocks for good when the
        # waiting parent was killed, and a worker must not outlive it.
        with contextlib.suppress(OSError):
            ready.send(True)
        ready.close()
        stop.wait()
    finally:
        if http is not None and http_thread is not None:
            http.should_exit = True
            http_thread.join(timeout=10)
        if http_sock is not None:
            http_sock.close()
        if channel is not None:
            channel.close()
        if dicom is not None:
            dicom.stop()
        archive.close()


def _stop_when_orphaned(parent: int, stop: threading.Event) -> None:
    """Stop the worker when the main process is gone without stopping it (killed):
    a worker left behind would keep serving its share of the HTTP socket."""
    while True:
        if os.getppid() != parent:
            log.warning("the main process %d is gone; this worker stops", parent)
            stop.set()
        if stop.wait(1.0):
            return


class Workers:
    """Starts and stops the worker processes and holds the DICOM channels to them."""

    def __init__(self, settings: Settings) -> None:
        data = settings.model_dump(mode="json")
        data["dicom"]["host"] = "127.0.0.1"
        data["dicom"]["port"] = 0  # a worker accepts no association itself
        self._data = data
        self._dicom = settings.dicom.workers - 1
        self._http = settings.http.workers - 1
        self._count = max(self._dicom, self._http)
        self._pairs = [
            socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(self._dicom)
        ]
        self._procs: list[BaseProcess] = []

    @property
    def channels(self) -> list[socket.socket]:
        """The main process's ends of the DICOM channels, one per DICOM worker."""
        return [ours for ours, _ in self._pairs]

    def start(self, http_address: tuple[str, int], dicom_port: int, timeout: float = 60) -> None:
        """Start the workers; returns once each one serves."""
        ctx = multiprocessing.get_context("spawn")
        for i in range(self._count):
            ready, ready_in_child = ctx.Pipe(duplex=False)
            channel = self._pairs[i][1] if i < self._dicom else None
            listener = http_address if i < self._http else None
            # multiprocessing hands the channel's descriptor to the child.
            proc = ctx.Process(
                target=_run,
                args=(self._data, channel, listener, dicom_port, ready_in_child, os.getpid()),
                daemon=True,
                name=f"ciams-worker-{i + 1}",
            )
            proc.start()
            self._procs.append(proc)
            ready_in_child.close()  # the child holds its own copy
            try:
                started = ready.poll(timeout) and bool(ready.recv())
            except EOFError:  # the child died before it served
                started = False
            ready.close()
            if not started:
                self.stop()
                raise RuntimeError("a worker process did not start")
        for _, theirs in self._pairs:
            theirs.close()  # the children hold their ends now
        if self._procs:
            log.info(
                "%d worker processes (%d DICOM, %d HTTP)", self._count, self._dicom, self._http
            )

    @property
    def pids(self) -> list[int]:
        """Process IDs of the running workers."""
        return [p.pid for p in self._procs if p.pid is not None]

    def stop(self) -> None:
        """Ask the workers to finish their work and exit."""
        for ours, _ in self._pairs:
            ours.close()
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        self._procs.clear()
