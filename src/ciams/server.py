"""The central server process: archive + DICOM listener + HTTP app + background tasks.

``ciams serve`` runs :meth:`Server.run` in the foreground; tests use
:meth:`Server.start` / :meth:`Server.stop`, which run the HTTP side in a thread on
a socket bound beforehand, so port 0 gives an ephemeral port without a race.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from ciams.archive import Archive
from ciams.config import Settings
from ciams.errors import CiamsError, ConfigError
from ciams.workers import Workers

log = logging.getLogger(__name__)


def open_archive(settings: Settings) -> Archive:
    """The archive with every ingest guard the settings ask for (server and CLI alike)."""
    from ciams.deid.guard import ingest_guard

    archive = Archive(settings)
    try:
        guard = ingest_guard(settings.deid.trial_recipes)
    except CiamsError:
        archive.close()
        raise
    if guard is not None:
        archive.add_guard(guard)
    return archive


def serves_https(settings: Settings) -> bool:
    """Whether the HTTP side runs TLS."""
    return settings.tls.enabled and settings.tls.http


def uvicorn_server(app: Any, settings: Settings) -> uvicorn.Server:
    """The HTTP server of ``app`` (main process and HTTP workers alike)."""
    extra: dict[str, Any] = {}
    if serves_https(settings):
        extra["ssl_certfile"] = str(settings.tls.cert_file)
        extra["ssl_keyfile"] = str(settings.tls.key_file)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,
        limit_concurrency=None,
        **extra,
    )
    return uvicorn.Server(config)


def bind_http(host: str, port: int, *, shared: bool = False) -> socket.socket:
    """A listening socket for the web application.

    ``shared``: every HTTP process binds its own socket to the same port with
    ``SO_REUSEPORT``, and the kernel picks one per new connection by a hash of the
    client's address and port. (With one inherited socket, whichever process woke
    first took every waiting connection.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="choose another port with --http-port",
        ) from exc
    sock.listen(128)
    return sock


class Server:
    """Everything ``ciams serve`` runs, started and stopped as one."""

    def __init__(self, settings: Settings) -> None:
        from ciams import tasks
        from ciams.net import DicomServer
        from ciams.web import create_app

        self.settings = settings
        self.archive = open_archive(settings)
        self.tasks = tasks.TaskRunner(settings, self.archive)
        self.dicom = DicomServer(self.archive, settings)
        self.app = create_app(self.archive, settings)
        self._workers: Workers | None = None
        self._http_sock: socket.socket | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self.http_port = 0
        self.dicom_port = 0

    @property
    def https(self) -> bool:
        return serves_https(self.settings)

    @property
    def http_url(self) -> str:
        scheme = "https" if self.https else "http"
        return f"{scheme}://{self.settings.http.host}:{self.http_port}"

    def _bind_http(self) -> socket.socket:
        sock = bind_http(
            self.settings.http.host,
            self.settings.http.port,
            shared=self.settings.http.workers > 1,
        )
        self.http_port = sock.getsockname()[1]
        return sock

    def start(self) -> None:
        """Start every part in background threads; returns when all listen."""
        self.tasks.start()
        self._http_sock = self._bind_http()
        self._start_dicom(self._http_sock)
        self._uvicorn = uvicorn_server(self.app, self.settings)
        self._http_thread = threading.Thread(
            target=self._uvicorn.run,
            kwargs={"sockets": [self._http_sock]},
            name="ciams-http",
            daemon=True,
        )
        self._http_thread.start()
        deadline = time.monotonic() + 20
        while not self._uvicorn.started:
            if time.monotonic() > deadline or not self._http_thread.is_alive():
                raise ConfigError("the HTTP server did not start")
            time.sleep(0.02)

    def _start_dicom(self, http_sock: socket.socket) -> None:
        """The DICOM listener, then the worker processes (which listen on the port of
        ``http_sock`` too)."""
        if max(self.settings.dicom.workers, self.settings.http.workers) > 1:
            self._workers = Workers(self.settings)
            self.dicom.dispatch_to = self._workers.channels
        self.dicom_port = self.dicom.start()
        self.app.state.dicom_port = self.dicom_port
        if self._workers is not None:
            self._workers.start(http_sock.getsockname()[:2], self.dicom_port)

    @property
    def worker_pids(self) -> list[int]:
        """Process IDs of the worker processes (none without workers)."""
        return self._workers.pids if self._workers is not None else []

    def _stop_dicom(self) -> None:
        if self._workers is not None:
            self._workers.stop()
            self._workers = None
        self.dicom.stop()

    def stop(self) -> None:
        """Stop all parts and release the archive."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._http_thread is not None:
            self._http_thread.join(timeout=10)
        if self._http_sock is not None:
            self._http_sock.close()
        self._stop_dicom()
        self.tasks.stop()
        self.archive.close()

    def run(self) -> None:
        """Run in the foreground until interrupted (Ctrl-C / SIGTERM)."""
        self.tasks.start()
        sock = self._bind_http()
        self._start_dicom(sock)
        server = uvicorn_server(self.app, self.settings)
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
            self._stop_dicom()
            self.tasks.stop()
            self.archive.close()
