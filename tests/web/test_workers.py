"""Several HTTP processes on one listening socket (http.workers), one archive."""

from __future__ import annotations

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
