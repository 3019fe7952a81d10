"""Background work on huey: embedded (SQLite queue, in-process) and Redis + `ciams worker`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ciams.archive import Archive
from ciams.config import Settings
from ciams.tasks import TaskRunner
from tests.conftest import wait_until
from tests.corpus import make_series, to_bytes


def test_embedded_series_complete(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(tasks={"series_settle_seconds": 0.5})
    with Archive(settings) as archive:
        runner = TaskRunner(settings, archive)
        completed: list[str] = []
        runner.on_series_complete(completed.append)
        runner.start()
        try:
            blobs = [to_bytes(ds) for ds in make_series(3, rows=8, columns=8)]
            results = [archive.ingest(b) for b in blobs]
            series_uid = results[0].series_instance_uid
            assert wait_until(lambda: completed == [series_uid])
            _, done = archive.series_last_received(series_uid)
            assert done is not None
        finally:
            runner.stop()
    assert (settings.data_dir / "tasks.db").exists()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (make test installs Debian's redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    assert wait_until(up, 10)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def test_redis_with_worker_process(make_settings: Callable[..., Settings], redis_url: str) -> None:
    settings = make_settings(
        tasks={"backend": "redis", "redis_url": redis_url, "series_settle_seconds": 0.5}
    )
    env = dict(
        os.environ,
        CIAMS_TASKS__BACKEND="redis",
        CIAMS_TASKS__REDIS_URL=redis_url,
        CIAMS_TASKS__SERIES_SETTLE_SECONDS="0.5",
    )
    with Archive(settings) as archive:
        runner = TaskRunner(settings, archive)
        runner.start()  # no-op for Redis: nothing consumes in this process
        results = [archive.ingest(to_bytes(ds)) for ds in make_series(2, rows=8, columns=8)]
        series_uid = results[0].series_instance_uid
        time.sleep(1.0)
        assert archive.series_last_received(series_uid)[1] is None  # nobody consumed yet
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ciams",
                "worker",
                "--data-dir",
                str(settings.data_dir),
                "--database-url",
                settings.db_url,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            assert wait_until(
                lambda: archive.series_last_received(series_uid)[1] is not None, 60
            ), "the worker process did not complete the series"
        finally:
            worker.terminate()
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        runner.stop()
