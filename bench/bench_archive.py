"""CIAMS vs Orthanc, side by side in one run on one machine.

    python bench/bench_archive.py [--instances 2000] [--index-rows 100000] [--quick]
                                  [--profile] [--repeat N] [--only ingest,query,...]

Figures (see bench/README.md): C-STORE ingest with storescu (1 association, and 4 in
parallel), STOW-RS ingest, C-FIND and QIDO-RS latency by Patient ID over an index of
``--index-rows`` instances, WADO-RS retrieve of a study. Every figure is given for both
servers and as a ratio where > 1 means CIAMS is better: CIAMS/Orthanc for throughput,
Orthanc/CIAMS for latency.

Writes bench/results/archive-<date>[-quick].json and prints a table.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

# CIAMS DICOM listener and HTTP processes (--dicom-workers, --http-workers); set by main().
DICOM_WORKERS = 1
HTTP_WORKERS = 1
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from orthanc import Orthanc, free_port, orthanc_version  # noqa: E402

import corpus as corpus_mod  # noqa: E402

VENV_BIN = Path(sys.executable).parent
CLIENT_AE = "BENCH"
CIAMS_AE = "CIAMS"
NODELAY_ENV = dict(os.environ, TCP_NODELAY="1")
STOW_BATCH = 20
STOW_CONCURRENCY = 4
WADO_REPEAT = 3
FIND_KEYS = [
    "PatientName",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
]


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


# -- servers -----------------------------------------------------------------------------

_DIMSE_ONLY = r"""
import signal, sys, threading
from ciams.config import load_settings
from ciams.archive import Archive
from ciams.net import DicomServer
s = load_settings(data_dir=sys.argv[1], dicom={"port": int(sys.argv[2]), "ae_title": sys.argv[3]})
a = Archive(s)
d = DicomServer(a, s)
d.start()
ev = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: ev.set())
signal.signal(signal.SIGINT, lambda *_: ev.set())
ev.wait()
d.stop()
a.close()
"""


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, logfile: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}:\n"
                + logfile.read_text(errors="replace")[-3000:]
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port} after {timeout}s")
        time.sleep(0.1)


def settle() -> None:
    """Flush what the harness itself left dirty (the previous server's deleted data
    folder, ~1 GB) before a timed run, so that no server pays for it: CIAMS's group sync
    (syncfs) would otherwise flush it within the measurement, Orthanc's per-file
    fdatasync would not."""
    os.sync()


def _wait_http(port: int, proc: subprocess.Popen[bytes], timeout: float, logfile: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        _wait_port(port, proc, timeout, logfile)
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no HTTP answer on port {port} after {timeout}s")
        time.sleep(0.1)


def provision_user(data_dir: Path) -> str:
    """An admin account for the benchmark client: an API token for DICOMweb, and the
    client's AE title bound to it for DIMSE. Returns the token ("" when this tree has
    no accounts yet)."""
    ciams = str(VENV_BIN / "ciams")
    d = ["--data-dir", str(data_dir)]
    try:
        subprocess.run(
            [ciams, "user", "add", "bench", "--role", "admin", *d],
            capture_output=True,
            check=True,
            timeout=120,
        )
        out = subprocess.run(
            [ciams, "user", "token", "bench", "--expires", "0", *d],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        subprocess.run(
            [ciams, "user", "bind-ae", CLIENT_AE, "bench", *d],
            capture_output=True,
            check=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log(f"no benchmark account in CIAMS ({exc}); DICOMweb calls go unauthenticated")
        return ""
    tokens = [w for w in out.split() if w.startswith("ciams_")]
    return tokens[-1] if tokens else out.strip().splitlines()[-1]


class Ciams:
    """``ciams serve`` in its own process on a fresh data folder."""

    name = "CIAMS"

    def __init__(
        self,
        workdir: Path,
        mode: str = "cli",
        *,
        data_dir: Path | None = None,
        provision: bool = True,
    ) -> None:
        self.provision = provision
        self.workdir = workdir
        self.mode = mode  # "cli" (ciams serve) or "dimse" (Archive + DicomServer only)
        self.given_data_dir = data_dir
        self.data_dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = 0
        self.dicom_port = 0
        self.ae_title = CIAMS_AE
        self.token = ""

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def has_dicomweb(self) -> bool:
        return self.mode == "cli"

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Ciams:
        self.data_dir = self.given_data_dir or Path(
            tempfile.mkdtemp(prefix="ciams-", dir=self.workdir)
        )
        self.http_port, self.dicom_port = free_port(), free_port()
        self.logfile = self.data_dir.parent / f"{self.data_dir.name}.log"
        if self.mode == "cli" and self.provision:
            self.token = provision_user(self.data_dir)
        if self.mode == "cli":
            cmd = [
                str(VENV_BIN / "ciams"),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--http-port",
                str(self.http_port),
                "--dicom-port",
                str(self.dicom_port),
                "--ae-title",
                self.ae_title,
                "--dicom-workers",
                str(DICOM_WORKERS),
                "--http-workers",
                str(HTTP_WORKERS),
            ]
        else:
            cmd = [
                sys.executable,
                "-c",
                _DIMSE_ONLY,
                str(self.data_dir),
                str(self.dicom_port),
                self.ae_title,
            ]
        self._log = open(self.logfile, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=NODELAY_ENV
        )
        try:
            if self.mode == "cli":
                # The HTTP socket listens (and completes TCP handshakes) before the
                # worker processes are up; the server answers once everything is.
                _wait_http(self.http_port, self.proc, 120, self.logfile)
            _wait_port(self.dicom_port, self.proc, 120, self.logfile)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self, *, keep: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
        if self.data_dir is not None and not keep and self.given_data_dir is None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.logfile.unlink(missing_ok=True)

    def count_instances(self) -> int:
        assert self.data_dir is not None
        con = sqlite3.connect(f"file:{self.data_dir / 'index.db'}?mode=ro", uri=True, timeout=30)
        try:
            return int(con.execute("SELECT count(*) FROM instances").fetchone()[0])
        finally:
            con.close()

    def __enter__(self) -> Ciams:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def detect_ciams_mode(workdir: Path) -> str:
    """'cli' when ``ciams serve`` starts (DICOMweb available), else 'dimse'."""
    try:
        with Ciams(workdir, "cli", provision=False):
            return "cli"
    except Exception as exc:
        log(
            f"`ciams serve` does not start ({str(exc).strip().splitlines()[-1][:200]}); "
            "falling back to Archive + DicomServer only: DICOMweb figures are skipped"
        )
    with Ciams(workdir, "dimse"):
        return "dimse"


def orthanc_server(workdir: Path, *, sync: bool = True) -> Orthanc:
    # 131072 is the largest PDU Orthanc accepts ("tuned"; its default is 16384).
    return Orthanc(
        workdir=workdir,
        sync_storage=sync,
        calling_ae=CLIENT_AE,
        extra_config={"MaximumPduLength": 131072},
    )


# -- measurements ------------------------------------------------------------------------


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    better: str  # "higher" or "lower"
    ciams: float | None = None
    orthanc: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.ciams or not self.orthanc:
            return None
        return self.ciams / self.orthanc if self.better == "higher" else self.orthanc / self.ciams


def storescu(folders: list[Path], port: int, aec: str) -> float:
    """Send every file under ``folders``, one storescu (one association) per folder, all at
    once; return the wall-clock seconds until the last one finished."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                "storescu",
                "-aet",
                CLIENT_AE,
                "-aec",
                aec,
                "+sd",
                "+r",
                "-nh",
                "127.0.0.1",
                str(port),
                str(folder),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=NODELAY_ENV,
        )
        for folder in folders
    ]
    outs = [p.communicate()[0] for p in procs]
    elapsed = time.perf_counter() - t0
    for p, out in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed ({p.returncode}): {out.decode()[-2000:]}")
    return elapsed


def stow_bodies(datas: list[bytes], batch: int) -> list[tuple[bytes, str]]:
    boundary = "ciams-bench-5f0c1e2d"
    out = []
    for i in range(0, len(datas), batch):
        parts = []
        for d in datas[i : i + batch]:
            parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            parts.append(d)
            parts.append(b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        out.append(
            (b"".join(parts), f'multipart/related; type="application/dicom"; boundary={boundary}')
        )
    return out


def stow(
    base: str, bodies: list[tuple[bytes, str]], concurrency: int, auth: dict[str, str]
) -> float:
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "c"):
            local.c = httpx.Client(timeout=600, headers=auth)
        return local.c

    def post(item: tuple[bytes, str]) -> None:
        body, ctype = item
        r = client().post(
            f"{base}/studies",
            content=body,
            headers={"Content-Type": ctype, "Accept": "application/dicom+json"},
        )
        if r.status_code not in (200, 202):
            raise RuntimeError(f"STOW-RS answered {r.status_code}: {r.text[:500]}")

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, bodies))
    return time.perf_counter() - t0


def wado_study(base: str, study_uid: str, auth: dict[str, str]) -> tuple[int, float]:
    with httpx.Client(timeout=600, headers=auth) as c:
        t0 = time.perf_counter()
        n = 0
        with c.stream(
            "GET",
            f"{base}/studies/{study_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        ) as r:
            if r.status_code != 200:
                raise RuntimeError(f"WADO-RS answered {r.status_code}: {r.read()[:300]!r}")
            for chunk in r.iter_raw(1 << 20):
                n += len(chunk)
        return n, time.perf_counter() - t0


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000.0
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "mean": float(a.mean()),
        "n": len(values),
    }


def findscu_once(port: int, aec: str, patient_id: str) -> tuple[float, int]:
    cmd = [
        "findscu",
        "-S",
        "-aet",
        CLIENT_AE,
        "-aec",
        aec,
        "-v",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"PatientID={patient_id}",
    ]
    for k in FIND_KEYS:
        cmd += ["-k", k]
    cmd += ["127.0.0.1", str(port)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, env=NODELAY_ENV)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"findscu failed: {r.stderr.decode()[-1000:]}")
    text = (r.stdout + r.stderr).decode(errors="replace")
    return dt, text.count("(Pending)")


class AssociationLost(RuntimeError):
    pass


class PynetdicomFinder:
    """One association, reused: C-FIND round trips without process spawns."""

    def __init__(self, port: int, aec: str) -> None:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        self.model = FIND
        self.port, self.aec = port, aec
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=CLIENT_AE)
        ae.add_requested_context(self.model)
        ae.network_timeout = 120
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        self.assoc = ae.associate("127.0.0.1", self.port, ae_title=self.aec)
        if not self.assoc.is_established:
            raise RuntimeError(f"C-FIND association to {self.aec}:{self.port} rejected")
        sock = self.assoc.dul.socket.socket  # type: ignore[union-attr]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def query(self, patient_id: str) -> tuple[float, int]:
        try:
            return self._query(patient_id)
        except AssociationLost:
            # An aborted or timed-out association: note it, re-associate, ask again.
            self.reconnects += 1
            log(f"C-FIND association to {self.aec} lost; re-associating")
            self._connect()
            return self._query(patient_id)

    def _query(self, patient_id: str) -> tuple[float, int]:
        from pydicom.dataset import Dataset

        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientID = patient_id
        for k in FIND_KEYS:
            setattr(ds, k, "")
        t0 = time.perf_counter()
        n = 0
        for status, ident in self.assoc.send_c_find(ds, self.model):
            code = getattr(status, "Status", None) if status is not None else None
            if code is None:
                raise AssociationLost(self.aec)
            if code in (0xFF00, 0xFF01) and ident is not None:
                n += 1
            elif code != 0x0000:
                raise RuntimeError(f"C-FIND status 0x{code:04X} from {self.aec}")
        return time.perf_counter() - t0, n

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


def qido_once(client: httpx.Client, base: str, patient_id: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = client.get(
        f"{base}/studies",
        params={"PatientID": patient_id},
        headers={"Accept": "application/dicom+json"},
    )
    dt = time.perf_counter() - t0
    if r.status_code == 204:
        return dt, 0
    if r.status_code != 200:
        raise RuntimeError(f"QIDO-RS answered {r.status_code}: {r.text[:300]}")
    return dt, len(r.json())


# -- profiling ---------------------------------------------------------------------------


CATEGORIES = [  # (category, substring of a frame's file), matched from the leaf upwards
    ("storage: write, fsync/syncfs, rename", "ciams/archive/storage.py"),
    ("index: SQLAlchemy ORM + SQLite commit", "ciams/archive/index.py"),
    ("parse: pydicom dcmread + sha256", "ciams/archive/parse.py"),
    ("ingest glue (service.py)", "ciams/archive/service.py"),
    ("HTTP / DICOMweb (ASGI, multipart)", "ciams/web/"),
    ("HTTP server (uvicorn/starlette)", "uvicorn/"),
    ("HTTP server (uvicorn/starlette)", "starlette/"),
    ("task queue (huey consumer)", "huey/"),
    ("pynetdicom DUL: PDU recv (4 KiB reads) + decode", "AssociationSocket.recv"),
    ("pynetdicom DUL: PDU recv (4 KiB reads) + decode", "_read_pdu_data"),
    ("pynetdicom DUL: PDU recv (4 KiB reads) + decode", "_decode_pdu"),
    ("pynetdicom DUL: PDU recv (4 KiB reads) + decode", "pynetdicom/pdu"),
    ("pynetdicom DUL: state machine, PDU send", "pynetdicom/fsm.py"),
    ("pynetdicom DUL: state machine, PDU send", "AssociationSocket.send"),
    ("pynetdicom DUL reactor: 1 ms polling loop (select, queues)", "pynetdicom/dul.py"),
    ("pynetdicom DUL reactor: 1 ms polling loop (select, queues)", "pynetdicom/transport.py"),
    ("pynetdicom DIMSE: message assembly, C-STORE-RSP", "pynetdicom/dimse"),
    ("pynetdicom DIMSE: message assembly, C-STORE-RSP", "pynetdicom/service_class.py"),
    ("pynetdicom DIMSE: message assembly, C-STORE-RSP", "pynetdicom/events.py"),
    ("pynetdicom association reactor: 1 ms polling loop", "pynetdicom/association.py"),
]


def _short(frame: str) -> str:
    if " (" not in frame:
        return frame
    func, _, where = frame.rpartition(" (")
    return f"{func} ({where.split(':')[0].rsplit('/', 1)[-1]}" + ")"


def summarize_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    """Aggregate py-spy's collapsed stacks: share of samples per category of the ingest
    path, per function (inclusive and self) and per thread."""
    inclusive: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    cats: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = stack.split(";")
        threads[frames[0].split(": ", 1)[-1]] += count
        for name in {_short(f) for f in frames[1:]}:
            inclusive[name] += count
        self_[_short(frames[-1])] += count
        cat = "other"
        for fr in reversed(frames[1:]):
            hit = next((c for c, pat in CATEGORIES if pat in fr), None)
            if hit:
                cat = hit
                break
        cats[cat] += count
    if not total:
        return {"samples": 0}

    def share(c: collections.Counter[str], k: int = top) -> list[tuple[str, float]]:
        return [(name, round(100.0 * v / total, 1)) for name, v in c.most_common(k)]

    return {
        "samples": total,
        "categories_pct": share(cats, 50),
        "threads_pct": share(threads, 12),
        "self_pct": share(self_),
        "inclusive_pct": share(inclusive, 40),
    }


def profile_cstore(
    mode: str, workdir: Path, ct: corpus_mod.CtCorpus, out_dir: Path
) -> dict[str, Any]:
    pyspy = VENV_BIN / "py-spy"
    if not pyspy.exists():
        return {"error": "py-spy is not installed in the venv (pip install py-spy)"}
    results: dict[str, Any] = {}
    for variant, folders in (("1 association", [ct.root]), ("4 associations", ct.quarters())):
        with Ciams(workdir, mode) as srv:
            tag = "1assoc" if variant.startswith("1") else "4assoc"
            raw = out_dir / f"profile-cstore-{tag}.txt"
            spy = subprocess.Popen(
                [
                    str(pyspy),
                    "record",
                    "--pid",
                    str(srv.pid),
                    "--rate",
                    "200",
                    "--threads",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            cpu0 = _proc_cpu_seconds(srv.pid) or 0.0
            elapsed = storescu(folders, srv.dicom_port, srv.ae_title)
            cpu1 = _proc_cpu_seconds(srv.pid) or 0.0
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
            summary = summarize_profile(raw) if raw.exists() else {"samples": 0}
            summary["seconds"] = round(elapsed, 2)
            summary["instances_per_s_under_profiler"] = round(len(ct.files) / elapsed, 1)
            summary["server_cpu_ms_per_instance_under_profiler"] = round(
                1000 * (cpu1 - cpu0) / len(ct.files), 2
            )
            summary["raw"] = str(raw.relative_to(HERE))
            results[variant] = summary
    return results


def _proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process and its live children (CIAMS's DICOM workers)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        total = (int(fields[11]) + int(fields[12])) / ticks
    except OSError:
        return None
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = [int(c) for c in task.read_text().split()]
        except OSError:
            continue
        for child in children:
            total += _proc_cpu_seconds(child) or 0.0
    return round(total, 2)


# -- the run -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    only = set(args.only.split(",")) if args.only else {"ingest", "stow", "query", "wado"}
    figures: list[Figure] = []
    notes: list[str] = []
    extra: dict[str, Any] = {}

    ct = corpus_mod.ct_corpus(args.instances, log=log)
    n = len(ct.files)
    mb = ct.total_bytes / 1e6
    log(f"CT corpus: {n} instances, {mb:.1f} MB in {ct.root}")
    # Read once before any clock starts: the first server measured must not be the one
    # whose storescu reads the corpus from disk (the first C-STORE run was the slowest).
    for path in ct.files:
        path.read_bytes()

    mode = detect_ciams_mode(runs)
    launched = "ciams serve" if mode == "cli" else "Archive + DicomServer (no HTTP)"
    log(f"CIAMS launched as: {launched}")

    def ingest_figure(key: str, label: str, folders: list[Path]) -> None:
        inst = Figure(f"{key}_instances_per_s", f"{label} (instances/s)", "instances/s", "higher")
        mbs = Figure(f"{key}_mb_per_s", f"{label} (MB/s)", "MB/s", "higher")
        times: dict[str, list[float]] = {"CIAMS": [], "Orthanc": []}
        cpu: dict[str, list[float]] = {"CIAMS": [], "Orthanc": []}
        for rep in range(args.repeat):
            order = ["CIAMS", "Orthanc"] if rep % 2 == 0 else ["Orthanc", "CIAMS"]
            for who in order:
                srv: Any = Ciams(runs, mode) if who == "CIAMS" else orthanc_server(runs)
                with srv:
                    settle()
                    cpu0 = _proc_cpu_seconds(srv.pid)
                    dt = storescu(folders, srv.dicom_port, srv.ae_title)
                    cpu1 = _proc_cpu_seconds(srv.pid)
                    got = srv.count_instances()
                if got != n:
                    raise RuntimeError(f"{who} indexed {got} of {n} instances after {label}")
                times[who].append(dt)
                if cpu0 is not None and cpu1 is not None:
                    cpu[who].append(1000.0 * (cpu1 - cpu0) / n)
                log(
                    f"{label}: {who} {n / dt:.1f} instances/s ({dt:.2f}s, server CPU "
                    f"{cpu[who][-1] if cpu[who] else float('nan'):.1f} ms/instance)"
                )
        for who, attr in (("CIAMS", "ciams"), ("Orthanc", "orthanc")):
            best = min(times[who])
            setattr(inst, attr, n / best)
            setattr(mbs, attr, mb / best)
            inst.detail[who] = {
                "seconds": [round(t, 3) for t in times[who]],
                "server_cpu_ms_per_instance": [round(c, 2) for c in cpu[who]],
            }
        figures.extend([inst, mbs])

    if "ingest" in only:
        ingest_figure("cstore_1", "C-STORE, 1 association", [ct.root])
        ingest_figure("cstore_4", "C-STORE, 4 associations", ct.quarters())

    wado_targets: list[Any] = []
    try:
        if ("stow" in only or "wado" in only) and mode == "cli":
            datas = corpus_mod.load_bytes(ct)
            bodies = stow_bodies(datas, STOW_BATCH)
            del datas
            inst = Figure(
                "stow_instances_per_s",
                f"STOW-RS ({STOW_BATCH}/request, {STOW_CONCURRENCY} concurrent) (instances/s)",
                "instances/s",
                "higher",
            )
            mbs = Figure("stow_mb_per_s", "STOW-RS (MB/s)", "MB/s", "higher")
            stow_times: dict[str, list[float]] = {"CIAMS": [], "Orthanc": []}
            # Like C-STORE: a fresh server per run, order alternating, best run kept. The
            # last run's servers stay up for WADO-RS, which retrieves what they stored.
            for rep in range(args.repeat):
                order = ["CIAMS", "Orthanc"] if rep % 2 == 0 else ["Orthanc", "CIAMS"]
                last = rep == args.repeat - 1
                for who in order:
                    srv = Ciams(runs, mode) if who == "CIAMS" else orthanc_server(runs)
                    srv.start()
                    try:
                        settle()
                        dt = stow(srv.dicomweb_url, bodies, STOW_CONCURRENCY, srv.auth_headers)
                        got = srv.count_instances()
                    except BaseException:
                        srv.stop()
                        raise
                    if last:
                        wado_targets.append((who, srv))
                    else:
                        srv.stop()
                    if got != n:
                        raise RuntimeError(f"{who} indexed {got} of {n} instances after STOW-RS")
                    stow_times[who].append(dt)
                    log(f"STOW-RS: {who} {n / dt:.1f} instances/s ({dt:.2f}s)")
            for who in ("CIAMS", "Orthanc"):
                best = min(stow_times[who])
                setattr(inst, who.lower(), n / best)
                setattr(mbs, who.lower(), mb / best)
                inst.detail[who] = {"seconds": [round(t, 3) for t in stow_times[who]]}
            wado_targets.sort(key=lambda target: target[0] != "CIAMS")
            del bodies
            figures.extend([inst, mbs])
            if not wado_targets[1][1].has_dicomweb:
                notes.append(
                    "Orthanc has no DICOMweb plugin here: install Debian's orthanc-dicomweb"
                )
        elif mode != "cli":
            notes.append("DICOMweb figures skipped: `ciams serve` did not start in this tree")

        if "wado" in only and wado_targets:
            study = ct.largest_study()
            size = ct.study_bytes[study] / 1e6
            fig = Figure(
                "wado_study_mb_per_s",
                f"WADO-RS study retrieve ({ct.studies[study]} instances, {size:.0f} MB) (MB/s)",
                "MB/s",
                "higher",
            )
            rates: dict[str, list[float]] = {"CIAMS": [], "Orthanc": []}
            for _ in range(WADO_REPEAT):
                for who, srv in wado_targets:
                    nbytes, dt = wado_study(srv.dicomweb_url, study, srv.auth_headers)
                    if nbytes < ct.study_bytes[study]:
                        raise RuntimeError(f"{who} WADO-RS returned {nbytes} bytes < study size")
                    rates[who].append(nbytes / 1e6 / dt)
            fig.ciams = statistics.median(rates["CIAMS"])
            fig.orthanc = statistics.median(rates["Orthanc"])
            fig.detail = {k: [round(v, 1) for v in vs] for k, vs in rates.items()}
            log(f"WADO-RS: CIAMS {fig.ciams:.0f} MB/s, Orthanc {fig.orthanc:.0f} MB/s")
            figures.append(fig)
    finally:
        for _, srv in wado_targets:
            srv.stop()

    if "query" in only:
        figures.extend(query_figures(args, runs, mode, notes, extra))

    if args.profile:
        log("profiling CIAMS's C-STORE path with py-spy (separate runs, not timed above)")
        extra["profile"] = profile_cstore(mode, runs, ct, work)

    shutil.rmtree(runs, ignore_errors=True)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "note": "shared, noisy 2-core machine: compare ratios, not absolute figures",
        },
        "versions": versions(),
        "fairness": {
            "TCP_NODELAY": "1 in the environment of Orthanc, storescu and findscu; "
            "CIAMS sets TCP_NODELAY on its sockets itself",
            "orthanc": "Debian's orthanc, private process, default SQLite index, "
            "StorageCompression false, SyncStorageArea true (fsync per file; false for the "
            "query index load), MaximumPduLength 131072, DICOMweb plugin; queries compared "
            "with the faster of StorageAccessOnFind Always (default) and Never",
            "ciams": "ciams serve in its own process, default settings but "
            f"--dicom-workers {DICOM_WORKERS} --http-workers {HTTP_WORKERS} (DICOM and HTTP "
            "processes; Orthanc uses every core too): acknowledged once the file and the "
            "index row are durable (SQLite WAL, group commit, one syncfs per commit batch)",
            "fresh_server_per_ingest_measurement": True,
            "ingest_repeats": args.repeat,
            "ingest_figure": "best of repeats (order alternates), C-STORE and STOW-RS alike",
        },
        "corpus": {
            "ct_instances": n,
            "ct_bytes": ct.total_bytes,
            "ct_studies": len(ct.studies),
            "index_instances": args.index_rows,
            "index_patients": max(1, args.index_rows // corpus_mod.INDEX_INSTANCES_PER_PATIENT),
        },
        "ratio_convention": "ratio > 1 means CIAMS is better: CIAMS/Orthanc for throughput, "
        "Orthanc/CIAMS for latency",
        "figures": [dict(asdict(f), ratio=f.ratio) for f in figures],
        "notes": notes,
        **extra,
    }


ORTHANC_FIND_VARIANTS = [
    ("StorageAccessOnFind=Always (default)", {}),
    ("StorageAccessOnFind=Never", {"StorageAccessOnFind": "Never"}),
]


def orthanc_index_server(runs: Path, idx: corpus_mod.IndexCorpus, reuse: bool) -> Orthanc:
    """An Orthanc holding the index corpus; the loaded folder is kept under bench/work/
    and reused by later runs (loading 100,000 instances takes minutes)."""
    folder = HERE / "work" / f"orthanc-index-{idx.rows}"
    marker = folder / "loaded.json"
    if not reuse:
        shutil.rmtree(folder, ignore_errors=True)
    orth = Orthanc(
        workdir=runs,
        sync_storage=False,
        calling_ae=CLIENT_AE,
        extra_config={"MaximumPduLength": 131072},
        persistent_dir=folder,
    )
    if marker.exists() and json.loads(marker.read_text()).get("rows") == idx.rows:
        orth.start()
        if orth.count_instances() == idx.rows:
            log(f"Orthanc index: reusing {folder} ({idx.rows} instances)")
            return orth
        orth.stop()
    shutil.rmtree(folder, ignore_errors=True)
    orth.start()
    log(f"loading {idx.rows} tiny instances into Orthanc with 4 parallel storescu ...")
    dt = storescu(idx.quarters(), orth.dicom_port, orth.ae_title)
    got = orth.count_instances()
    log(f"Orthanc index: {got} instances in {dt:.1f}s ({got / dt:.0f} instances/s, no fsync)")
    if got != idx.rows:
        orth.stop()
        raise RuntimeError(f"Orthanc indexed {got} of {idx.rows} tiny instances")
    marker.write_text(json.dumps({"rows": idx.rows, "load_seconds": round(dt, 1)}))
    return orth


def query_figures(
    args: argparse.Namespace, runs: Path, mode: str, notes: list[str], extra: dict[str, Any]
) -> list[Figure]:
    rows = args.index_rows
    idx = corpus_mod.index_corpus(rows, log=log)
    ciams_dir = Path(tempfile.mkdtemp(prefix="ciams-index-", dir=runs))
    t0 = time.perf_counter()
    corpus_mod.ciams_index_rows(rows, f"sqlite:///{ciams_dir / 'index.db'}", log=log)
    extra["index_load"] = {"ciams_direct_rows_seconds": round(time.perf_counter() - t0, 1)}
    ciams = Ciams(runs, mode, data_dir=ciams_dir)
    orth: Orthanc | None = None
    patients = corpus_mod.sample_patients(idx, args.queries)
    warm = corpus_mod.sample_patients(idx, 10, seed=99)
    # method -> variant -> server -> percentiles
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    labels: dict[str, str] = {}

    def measure(key: str, label: str, variant: str, fns: dict[str, Any]) -> None:
        try:
            _measure(key, label, variant, fns)
        except Exception as exc:  # one broken method must not lose the others
            log(f"{label} [{variant}] failed: {exc}")
            notes.append(f"{label} [Orthanc {variant}] failed: {exc}")

    def _measure(key: str, label: str, variant: str, fns: dict[str, Any]) -> None:
        for fn in fns.values():
            for p in warm:
                fn(p)
        lat: dict[str, list[float]] = {"CIAMS": [], "Orthanc": []}
        for i, p in enumerate(patients):
            order = ["CIAMS", "Orthanc"] if i % 2 == 0 else ["Orthanc", "CIAMS"]
            for who in order:
                dt, found = fns[who](p)
                if found != 1:
                    raise RuntimeError(f"{label}: {who} found {found} studies for {p}, expected 1")
                lat[who].append(dt)
        pc = {who: pct(v) for who, v in lat.items()}
        labels[key] = label
        results.setdefault(key, {})[variant] = pc
        log(
            f"{label} [Orthanc {variant}]: CIAMS p50 {pc['CIAMS']['p50']:.1f} ms "
            f"p95 {pc['CIAMS']['p95']:.1f} ms | Orthanc p50 {pc['Orthanc']['p50']:.1f} ms "
            f"p95 {pc['Orthanc']['p95']:.1f} ms"
        )

    try:
        ciams.start()
        orth = orthanc_index_server(runs, idx, reuse=not args.fresh_index)
        if ciams.count_instances() != rows:
            raise RuntimeError(f"CIAMS index holds {ciams.count_instances()} of {rows}")
        for variant, cfg in ORTHANC_FIND_VARIANTS:
            if cfg:
                orth.restart(cfg)
            servers: list[tuple[str, Any]] = [("CIAMS", ciams), ("Orthanc", orth)]
            measure(
                "cfind_findscu",
                "C-FIND by PatientID, findscu per query",
                variant,
                {w: (lambda p, s=s: findscu_once(s.dicom_port, s.ae_title, p)) for w, s in servers},
            )
            finders = {w: PynetdicomFinder(s.dicom_port, s.ae_title) for w, s in servers}
            try:
                measure(
                    "cfind_assoc",
                    "C-FIND by PatientID, pynetdicom, 1 association",
                    variant,
                    {w: finders[w].query for w in finders},
                )
            finally:
                for w, f in finders.items():
                    if f.reconnects:
                        notes.append(f"C-FIND ({variant}): {w} association re-made {f.reconnects}x")
                    f.close()
            if mode == "cli":
                clients = {w: httpx.Client(timeout=60, headers=s.auth_headers) for w, s in servers}
                try:
                    measure(
                        "qido",
                        "QIDO-RS /studies?PatientID, keep-alive",
                        variant,
                        {
                            w: (lambda p, s=s, c=clients[w]: qido_once(c, s.dicomweb_url, p))
                            for w, s in servers
                        },
                    )
                finally:
                    for c in clients.values():
                        c.close()
    finally:
        ciams.stop()
        if orth is not None:
            orth.stop()
        shutil.rmtree(ciams_dir, ignore_errors=True)

    figures: list[Figure] = []
    for key, by_variant in results.items():
        # Compare with Orthanc's faster configuration; CIAMS's figure from the same pass.
        best = min(by_variant, key=lambda v: by_variant[v]["Orthanc"]["p50"])
        pc = by_variant[best]
        for q in ("p50", "p95"):
            f = Figure(
                f"{key}_{q}_ms",
                f"{labels[key]} {q} (ms)",
                "ms",
                "lower",
                pc["CIAMS"][q],
                pc["Orthanc"][q],
            )
            f.detail = {
                "queries": len(patients),
                "orthanc_variant_compared": best,
                "all_variants_ms": {
                    v: {w: {k: round(x, 2) for k, x in d.items()} for w, d in r.items()}
                    for v, r in by_variant.items()
                },
            }
            figures.append(f)
    return figures


def versions() -> dict[str, str]:
    import pydicom
    import pynetdicom

    def cmd(*c: str) -> str:
        try:
            out = subprocess.run(c, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    try:
        import ciams

        ciams_v = getattr(ciams, "__version__", "unknown")
    except ImportError:
        ciams_v = "unknown"
    return {
        "ciams": ciams_v,
        "orthanc": orthanc_version(),
        "orthanc_dicomweb": cmd("dpkg-query", "-W", "-f=${Version}", "orthanc-dicomweb"),
        "dcmtk": cmd("storescu", "--version"),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "sqlite": sqlite3.sqlite_version,
    }


# -- output ------------------------------------------------------------------------------


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if unit == "ms" else f"{v:.1f}"


def markdown_table(result: dict[str, Any]) -> str:
    lines = [
        "| figure | CIAMS | Orthanc | ratio (>1 = CIAMS better) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for f in result["figures"]:
        r = f["ratio"]
        lines.append(
            f"| {f['label']} | {fmt(f['ciams'], f['unit'])} | "
            f"{fmt(f['orthanc'], f['unit'])} | {'—' if r is None else f'{r:.2f}x'} |"
        )
    return "\n".join(lines)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title="CIAMS vs Orthanc (ratio > 1 = CIAMS better: CIAMS/Orthanc for "
        "throughput, Orthanc/CIAMS for latency)"
    )
    for col in ("figure", "CIAMS", "Orthanc", "ratio"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    for f in result["figures"]:
        r = f["ratio"]
        style = "" if r is None else ("green" if r >= 1 else "red")
        t.add_row(
            f["label"],
            fmt(f["ciams"], f["unit"]),
            fmt(f["orthanc"], f["unit"]),
            "—" if r is None else f"[{style}]{r:.2f}x[/{style}]",
        )
    Console().print(t)


def update_readme(result: dict[str, Any], json_name: str) -> None:
    readme = HERE / "README.md"
    if not readme.exists():
        return
    text = readme.read_text()
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    if begin not in text or end not in text:
        return
    c = result["corpus"]
    block = (
        f"{begin}\nLatest full run: {result['date']} ({json_name}; {c['ct_instances']} CT "
        f"instances, {c['ct_bytes'] / 1e6:.0f} MB; {c['index_instances']} indexed instances "
        f"for the queries).\n\n{markdown_table(result)}\n{end}"
    )
    head, rest = text.split(begin, 1)
    text = head + block + rest.split(end, 1)[1]
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--instances", type=int, default=None, help="CT instances (default 2000)")
    ap.add_argument(
        "--index-rows",
        type=int,
        default=None,
        help="indexed instances for queries (default 100000)",
    )
    ap.add_argument("--queries", type=int, default=None, help="queries per method (default 200)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each ingest figure (best kept)")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 200 instances, 5000 index rows, 50 queries"
    )
    ap.add_argument(
        "--profile", action="store_true", help="also profile CIAMS's C-STORE path with py-spy"
    )
    ap.add_argument("--only", default="", help="comma list of: ingest,stow,wado,query")
    ap.add_argument(
        "--dicom-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="CIAMS DICOM listener processes (default: one per core, as Orthanc uses all)",
    )
    ap.add_argument(
        "--http-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="CIAMS HTTP processes (default: one per core)",
    )
    ap.add_argument("--no-readme", action="store_true", help="do not update the README table")
    ap.add_argument(
        "--fresh-index",
        action="store_true",
        help="reload Orthanc's query index instead of reusing bench/work/orthanc-index-N",
    )
    args = ap.parse_args(argv)
    global DICOM_WORKERS, HTTP_WORKERS
    DICOM_WORKERS = max(1, args.dicom_workers)
    HTTP_WORKERS = max(1, args.http_workers)
    if args.instances is None:
        args.instances = 200 if args.quick else 2000
    if args.index_rows is None:
        args.index_rows = 5000 if args.quick else 100000
    if args.queries is None:
        args.queries = 50 if args.quick else 200

    result = run(args)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    # A partial run gets a name of its own: it must not replace the day's full run.
    only = f"-only-{args.only.replace(',', '-')}" if args.only else ""
    name = f"archive-{stamp}{'-quick' if args.quick else ''}{only}.json"
    (out_dir / name).write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print()
    print(markdown_table(result))
    log(f"wrote bench/results/{name}")
    if not args.quick and not args.no_readme and not args.only:
        update_readme(result, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
