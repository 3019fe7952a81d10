"""Benchmark: ``ciams deid`` against dicognito and pydicom's ``deid`` (not a test).

Usage (from the repository root)::

    python bench/bench_deid.py [--n 400] [--tools-python bench/work/venv/bin/python]

* speed: instances/s on a synthetic CT corpus (512x512, 16 bit, a typical identifying
  header, vendor private block), each tool run the way its users run it: ``ciams deid``
  and ``python -m dicognito`` from the command line, ``deid`` through its Python API
  (``replace_identifiers`` with its default recipe, as its documentation shows);
* leaks: the marker corpus (:mod:`ciams.deid.synthetic`: a marker in every PS3.15
  Table E.1-1 attribute, in sequences, private tags, overlays, curves, file meta);
  a marker left in the output of an attribute the Basic Profile does not retain
  (K) is counted as a leak.

dicognito and deid need a pydicom of their own liking, so they run in a separate
virtual environment (``--tools-python``; ``make bench-venv`` or
``python -m venv bench/work/venv && bench/work/venv/bin/pip install dicognito deid``).
Results go to ``bench/results/deid.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"

DEID_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
from deid.dicom import get_files, replace_identifiers
files = list(get_files(sys.argv[1]))
replace_identifiers(dicom_files=files, save=True, output_folder=sys.argv[2], overwrite=True)
"""


def make_corpus(folder: Path, n: int) -> None:
    from ciams.deid.synthetic import ct_series
    from ciams.deid.writer import serialize

    if folder.exists() and len(list(folder.glob("*.dcm"))) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    per_series = 100
    done = 0
    while done < n:
        k = min(per_series, n - done)
        for ds in ct_series(k, patient_id=f"MRN{done // per_series:04d}", rows=512, cols=512):
            (folder / f"ct{done:05d}.dcm").write_bytes(serialize(ds))
            done += 1


def make_marker_corpus(folder: Path) -> dict[str, int]:
    from ciams.deid._standard import annex_e
    from ciams.deid.synthetic import marker_dataset
    from ciams.deid.writer import serialize

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ds, markers = marker_dataset()
    (folder / "markers.dcm").write_bytes(serialize(ds))
    # markers of attributes whose Basic Profile action is not K count as leaks
    retained = {t for t, row in annex_e.ATTRIBUTES.items() if row[2] == "K"}
    planted = {**markers.text, **markers.dates, **markers.uids}
    (folder.parent / "markers.json").write_text(json.dumps(planted))
    return {k: v for k, v in planted.items() if v not in retained}


def count_leaks(out: Path, planted: dict[str, int]) -> dict[str, object]:
    from ciams.deid.synthetic import MarkerSet

    ms = MarkerSet()
    for k, v in planted.items():
        if k.startswith("ZQ"):
            ms.text[k] = v
        elif k.startswith("1.2.999."):
            ms.uids[k] = v
        else:
            ms.dates[k] = v
    hits: dict[str, int] = {}
    files = [
        p
        for p in out.rglob("*")
        if p.is_file() and "quarantine" not in p.parts and not p.name.endswith(".json")
    ]
    for p in files:
        hits.update(ms.found_in(p.read_bytes()))
    from pydicom.datadict import keyword_for_tag

    names = sorted({keyword_for_tag(t) or f"{t:08X}" for t in hits.values()})
    return {"files": len(files), "leaked_markers": len(hits), "leaked_attributes": names}


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall-clock seconds and CPU seconds (user + sys of the child processes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 2):  # ciams deid exits 2 when something was quarantined
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--tools-python", default=str(WORK / "venv" / "bin" / "python"))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    corpus = WORK / "corpus_ct"
    make_corpus(corpus, args.n)
    env = {**os.environ, "CIAMS_DEID_SECRET": "benchmark-secret-0123456789"}
    subjects = WORK / "subjects.csv"
    subjects.write_text(
        "patient_id,subject_id\n"
        + "".join(f"MRN{i:04d},BENCH-{i:04d}\n" for i in range(args.n // 100 + 1))
    )
    tools: dict[str, Callable[[Path, Path], list[str]]] = {
        "ciams": lambda src, dst: [
            sys.executable,
            "-m",
            "ciams.deid.cli",
            str(src),
            str(dst),
            "--subjects",
            str(subjects),
            "--jobs",
            "0",
        ],
        "dicognito": lambda src, dst: [
            args.tools_python,
            "-m",
            "dicognito",
            "--quiet",
            "--output-directory",
            str(dst),
            str(src),
        ],
        "deid": lambda src, dst: [args.tools_python, "-c", DEID_SCRIPT, str(src), str(dst)],
    }
    # tools alternate within each round, so a busy machine slows them alike; the
    # children's CPU time (user + sys) is reported too: it hardly depends on load
    wall: dict[str, float] = {name: float("inf") for name in tools}
    cpu: dict[str, float] = {name: float("inf") for name in tools}
    for _ in range(args.repeat):
        for name, cmd in tools.items():
            dst = WORK / f"out_{name}"
            shutil.rmtree(dst, ignore_errors=True)
            dst.mkdir(parents=True)
            seconds, cpu_seconds = run(cmd(corpus, dst), env)
            wall[name] = min(wall[name], seconds)
            cpu[name] = min(cpu[name], cpu_seconds)
            shutil.rmtree(dst, ignore_errors=True)
    speed: dict[str, dict[str, float]] = {}
    for name in tools:
        speed[name] = {
            "seconds": round(wall[name], 3),
            "instances_per_s": round(args.n / wall[name], 1),
            "cpu_seconds": round(cpu[name], 3),
            "cpu_ms_per_instance": round(cpu[name] / args.n * 1000, 2),
        }
        print(
            f"{name:10s} {args.n} files in {wall[name]:6.2f} s = "
            f"{args.n / wall[name]:7.1f} inst/s; CPU {cpu[name] / args.n * 1000:6.2f} ms/inst"
        )
    faster = max(speed["dicognito"]["instances_per_s"], speed["deid"]["instances_per_s"])
    ratio = speed["ciams"]["instances_per_s"] / faster
    best_cpu = min(speed["dicognito"]["cpu_ms_per_instance"], speed["deid"]["cpu_ms_per_instance"])
    cpu_ratio = best_cpu / speed["ciams"]["cpu_ms_per_instance"]

    marker_dir = WORK / "markers" / "in"
    planted = make_marker_corpus(marker_dir)
    (WORK / "markers" / "subjects.csv").write_text("patient_id,subject_id\nMRN0001,M-0001\n")
    basic = WORK / "markers" / "basic.yaml"
    basic.write_text('recipe: 1\nname: bench-basic\nversion: "1"\nprofile: {options: []}\n')
    leak_tools: dict[str, list[str]] = {
        "ciams (basic profile)": [
            sys.executable,
            "-m",
            "ciams.deid.cli",
            str(marker_dir),
            "{dst}",
            "--subjects",
            str(WORK / "markers" / "subjects.csv"),
            "--recipe",
            str(basic),
        ],
        "ciams (default recipe)": [
            sys.executable,
            "-m",
            "ciams.deid.cli",
            str(marker_dir),
            "{dst}",
            "--subjects",
            str(WORK / "markers" / "subjects.csv"),
        ],
        "dicognito": [
            args.tools_python,
            "-m",
            "dicognito",
            "--quiet",
            "--output-directory",
            "{dst}",
            str(marker_dir),
        ],
        "deid": [args.tools_python, "-c", DEID_SCRIPT, str(marker_dir), "{dst}"],
    }
    leaks: dict[str, object] = {}
    for name, leak_cmd in leak_tools.items():
        dst = WORK / "markers" / ("out_" + name.split()[0] + str(len(name)))
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        subprocess.run(
            [c.replace("{dst}", str(dst)) for c in leak_cmd],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        leaks[name] = count_leaks(dst, planted)
        shutil.rmtree(dst, ignore_errors=True)
        print(f"{name:24s} leaked markers: {leaks[name]['leaked_markers']}")  # type: ignore[index]
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "corpus": {"kind": "synthetic CT 512x512x16 bit", "instances": args.n},
        "speed": speed,
        "ratio_vs_faster_competitor": round(ratio, 2),
        "cpu_ratio_vs_cheaper_competitor": round(cpu_ratio, 2),
        "load_average_at_end": os.getloadavg(),
        "marker_corpus": {
            "planted_non_retained_markers": len(planted),
            "results": leaks,
            "note": "ciams default recipe keeps cleaned descriptors and "
            "patient characteristics by design",
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "deid.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"ratio ciams / faster of (dicognito, deid) = {ratio:.2f} (wall), "
        f"{cpu_ratio:.2f} (CPU time)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
