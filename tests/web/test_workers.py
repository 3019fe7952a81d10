"""Several HTTP processes on one listening socket (http.workers), one archive."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from dicomweb_client.api import DICOMwebClient

from tests.corpus import make_series
from tests.web.conftest import client_bytes, multipart


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _established_on(port: int) -> set[str]:
    """Inodes of the established TCP sockets whose local port is ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                found.add(inode)
    return found


def test_two_http_processes_share_the_socket_and_the_archive(
    make_server: Callable[..., Any],
) -> None:
    server = make_server(http={"workers": 2})
    (worker,) = server.worker_pids
    pids = [os.getpid(), worker]

    # Connections stay open: each is served by the process that accepted it.
    clients = []
    owners: set[int] = set()
    try:
        for _ in range(64):
            c = httpx.Client(base_url=server.http_url, headers=server.auth, timeout=30)
            assert c.get("/api/health").status_code == 200
            clients.append(c)
            ours = _established_on(server.http_port)
            owners = {pid for pid in pids if _socket_inodes(pid) & ours}
            if len(owners) == 2 and len(clients) >= 8:
                break
        assert owners == set(pids), "every connection went to one process"

        # Stored through whichever process, visible to all of them.
        series = make_series(6, rows=16, columns=16, patient_id="HTTPW")
        for i, ds in enumerate(series):
            body, content_type = multipart([client_bytes(ds)])
            response = clients[i % len(clients)].post(
                "/dicom-web/studies", content=body, headers={"Content-Type": content_type}
            )
            assert response.status_code == 200, response.text
        for c in clients:
            found = c.get(
                "/dicom-web/instances",
                params={"PatientID": "HTTPW"},
                headers={"Accept": "application/dicom+json"},
            )
            assert found.status_code == 200 and len(found.json()) == 6
    finally:
        for c in clients:
            c.close()
    web = DICOMwebClient(url=server.http_url + "/dicom-web", headers=server.auth)
    assert len(web.search_for_series(search_filters={"PatientID": "HTTPW"})) == 1


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        # Threads come and go while we look (a task listed by glob may be gone by read).
        with contextlib.suppress(OSError):
            found.update(int(c) for c in task.read_text().split())
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may not collect it at once)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_stop_when_the_main_process_is_killed(tmp_path: Path) -> None:
    """A killed main process cannot stop its workers; they notice and exit instead of
    serving the shared HTTP socket on their own."""
    import signal
    import subprocess
    import sys
    import time

    ciams = Path(sys.executable).parent / "ciams"
    main = subprocess.Popen(
        [
            str(ciams),
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--http-port",
            "0",
            "--dicom-port",
            "0",
            "--http-workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not workers and time.monotonic() < deadline:
            time.sleep(0.2)
            workers = {child for child in _children(main.pid) if b"spawn_main" in _cmdline(child)}
        assert workers, "no worker process started"
        time.sleep(1)  # let the worker get past its start-up
        main.send_signal(signal.SIGKILL)
        main.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(w) for w in workers), "a worker outlived the main process"
    finally:
        for pid in workers | {main.pid}:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
