"""Start and stop a private Orthanc (Debian's /usr/sbin/Orthanc) for the benchmark.

Each instance gets its own temporary folder, a JSON configuration written there, its
default SQLite index, storage compression off, the DICOMweb plugin when Debian's
``orthanc-dicomweb`` package is installed, and ephemeral loopback ports. It never
touches the system service (/etc/orthanc, ports 4242/8042).

``TCP_NODELAY=1`` is put in Orthanc's environment: Debian's DCMTK 3.6.7 leaves Nagle's
algorithm on otherwise, and every C-STORE response then waits for a delayed ACK
(about 20 instances/s). Orthanc's own HTTP server has ``TcpNoDelay`` on by default.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ORTHANC_BIN = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7",
)


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dicomweb_plugin() -> str | None:
    for path in DICOMWEB_PLUGIN_CANDIDATES:
        if Path(path).exists():
            return path
    return None


def orthanc_version() -> str:
    try:
        out = subprocess.run(
            [ORTHANC_BIN, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.strip().splitlines()
    return first[0] if first else "unknown"


class Orthanc:
    """One private Orthanc process.  Use as a context manager."""

    def __init__(
        self,
        *,
        ae_title: str = "ORTHANC",
        sync_storage: bool = True,
        calling_ae: str = "BENCH",
        workdir: Path | None = None,
        extra_config: dict[str, Any] | None = None,
        persistent_dir: Path | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.sync_storage = sync_storage
        self.calling_ae = calling_ae
        self.extra_config = extra_config or {}
        self._parent = workdir
        self.persistent_dir = persistent_dir  # kept on stop (e.g. a loaded index to reuse)
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = 0
        self.dicom_port = 0
        self.has_dicomweb = False

    # -- life cycle ------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        assert self.dir is not None
        plugin = dicomweb_plugin()
        self.has_dicomweb = plugin is not None
        cfg: dict[str, Any] = {
            "Name": "ciams-bench",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "TemporaryDirectory": str(self.dir / "tmp"),
            "StorageCompression": False,
            "SyncStorageArea": self.sync_storage,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "KeepAlive": True,
            "TcpNoDelay": True,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomCheckModalityHost": False,
            "DicomModalities": {"bench": [self.calling_ae, "127.0.0.1", 104]},
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "SaveJobs": False,
            "MetricsEnabled": False,
            "LuaScripts": [],
            "Plugins": [plugin] if plugin else [],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Host": f"127.0.0.1:{self.http_port}",
                "Ssl": False,
            },
        }
        cfg.update(self.extra_config)
        return cfg

    def start(self, timeout: float = 60.0) -> Orthanc:
        if self.persistent_dir is not None:
            self.dir = self.persistent_dir
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="orthanc-", dir=self._parent))
        for sub in ("storage", "index", "tmp"):
            (self.dir / sub).mkdir(exist_ok=True)
        self.http_port = free_port()
        self.dicom_port = free_port()
        cfg_path = self.dir / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=2))
        env = dict(os.environ, TCP_NODELAY="1")
        self._log = open(self.dir / "orthanc.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [ORTHANC_BIN, "--no-jobs", str(cfg_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.dir,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self.proc.returncode}; see {self.dir}/orthanc.log:\n"
                    + (self.dir / "orthanc.log").read_text(errors="replace")[-2000:]
                )
            try:
                r = httpx.get(f"{self.url}/system", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("Orthanc did not start in time")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        self._stop_process()
        if self.dir is not None and self.persistent_dir is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def _stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    def restart(self, extra_config: dict[str, Any]) -> None:
        """Stop and start again on the same folders with more configuration."""
        keep = self.persistent_dir
        self.persistent_dir = self.dir
        self._stop_process()
        self.extra_config = {**self.extra_config, **extra_config}
        try:
            self.start()
        finally:
            self.persistent_dir = keep

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- facts -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    auth_headers: dict[str, str] = {}  # no authentication on loopback

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def statistics(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/statistics", timeout=30).json()

    def count_instances(self) -> int:
        return int(self.statistics()["CountInstances"])


if __name__ == "__main__":  # smoke check: start, print facts, stop
    with Orthanc() as o:
        print(orthanc_version(), o.url, o.dicom_port, "dicomweb:", o.has_dicomweb)
        print(o.statistics())
        print(httpx.get(f"{o.url}/plugins", timeout=10).json())
