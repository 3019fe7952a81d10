"""Background work after an instance is acknowledged, on the huey task queue.

Why huey: it is a maintained task-queue library whose storage is pluggable. The
embedded default keeps the queue in a SQLite file under the data folder and runs the
consumer as threads inside the server process: no extra server, and queued work
survives a restart. Scaled out, the same tasks go to Redis (``tasks.backend =
"redis"``) and ``ciams worker`` processes on any machine consume them. Celery and
Dramatiq need a broker even for one machine; RQ has no embedded mode.

Tasks are registered by name on a huey instance built from the settings (never at
import time), so the server and every worker register the same names.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey
from huey.consumer import Consumer

from ciams.archive import Archive, IndexOutcome, IndexRequest
from ciams.config import Settings

log = logging.getLogger(__name__)

SeriesHook = Callable[[str], None]


def make_huey(settings: Settings) -> Huey:
    """The huey instance for the configured backend."""
    if settings.tasks.backend == "redis":
        return RedisHuey("ciams", url=settings.tasks.redis_url, results=False, utc=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(
        "ciams", filename=str(settings.data_dir / "tasks.db"), results=False, utc=True
    )


class TaskRunner:
    """Registers CIAMS tasks, enqueues them after commits and (embedded) consumes them."""

    def __init__(self, settings: Settings, archive: Archive, *, produce: bool = True) -> None:
        self.settings = settings
        self.archive = archive
        self.huey = make_huey(settings)
        self._series_hooks: list[SeriesHook] = []
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None
        self._consumer_thread: threading.Thread | None = None
        self.series_check = self.huey.task(name="ciams.series_check", retries=3, retry_delay=5)(
            self._series_check
        )
        if produce:
            archive.add_listener(self._on_commit)

    # -- hooks ---------------------------------------------------------------------------

    def on_series_complete(self, hook: SeriesHook) -> None:
        """Call ``hook(series_uid)`` (in the consuming process) when a series completes."""
        self._series_hooks.append(hook)

    def task(self, name: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
        """Register another domain's task under a stable name."""
        return self.huey.task(name=name, **options)  # type: ignore[no-any-return]

    # -- producing -----------------------------------------------------------------------

    def _on_commit(self, batch: list[tuple[IndexRequest, IndexOutcome]]) -> None:
        settle = self.settings.tasks.series_settle_seconds
        now = time.monotonic()
        due: list[str] = []
        with self._lock:
            for req, outcome in batch:
                if outcome.outcome not in ("stored", "versioned"):
                    continue
                uid = req.parsed.series_instance_uid
                if self._pending.get(uid, 0.0) > now:
                    continue  # a check is already scheduled within the settle time
                self._pending[uid] = now + settle
                due.append(uid)
            if len(self._pending) > 10000:
                self._pending = {k: v for k, v in self._pending.items() if v > now}
        for uid in due:
            self.series_check.schedule((uid,), delay=settle)

    # -- consuming -----------------------------------------------------------------------

    def _series_check(self, series_uid: str) -> None:
        settle = self.settings.tasks.series_settle_seconds
        last, completed = self.archive.series_last_received(series_uid)
        if last is None:
            return
        waited = (datetime.now(UTC) - last).total_seconds()
        if waited < settle:
            self.series_check.schedule((series_uid,), delay=max(0.1, settle - waited))
            return
        if completed is not None and completed >= last:
            return
        self.archive.mark_series_complete(series_uid)
        log.info("series complete")
        for hook in self._series_hooks:
            hook(series_uid)

    def start(self) -> None:
        """Start the embedded consumer (threads in this process); no-op for Redis."""
        if self.settings.tasks.backend != "embedded" or self._consumer is not None:
            return
        self._consumer = self.huey.create_consumer(
            workers=self.settings.tasks.workers,
            worker_type="thread",
            periodic=False,
            initial_delay=0.05,
            max_delay=0.5,
            scheduler_interval=1,
            check_worker_health=False,
        )
        self._consumer.start()

    def stop(self) -> None:
        """Stop the embedded consumer."""
        if self._consumer is not None:
            self._consumer.stop(graceful=True)
            self._consumer = None

    def run_worker(self, workers: int) -> None:
        """Consume in the foreground (``ciams worker``) until interrupted."""
        consumer = self.huey.create_consumer(
            workers=workers, worker_type="thread", periodic=False, check_worker_health=True
        )
        consumer.run()
