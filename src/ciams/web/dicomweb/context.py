"""What every DICOMweb handler needs: the archive, the settings, URLs, worker threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import Request

from ciams.archive import Archive
from ciams.config import Settings
from ciams.web.security import WebAccess

PREFIX = "/dicom-web"
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A small thread-safe least-recently-used cache (handlers run in worker threads)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@dataclass
class Context:
    """Shared by the DICOMweb handlers of one app."""

    archive: Archive
    settings: Settings
    access: WebAccess
    # Ingest and read work run in threads; their own limiters keep a burst of uploads
    # from starving retrieves (and the reverse) on anyio's shared default pool. Created
    # on first use because a limiter belongs to the running event loop.
    _limiters: dict[str, CapacityLimiter] = field(default_factory=dict)
    # DICOM JSON of recently asked instances, by (storage key, instance URL).
    metadata_cache: LRU[tuple[str, str], str] = field(default_factory=lambda: LRU(4096))

    def _limiter(self, name: str) -> CapacityLimiter:
        limiter = self._limiters.get(name)
        if limiter is None:
            limiter = self._limiters[name] = CapacityLimiter(16)
        return limiter

    def root(self, request: Request) -> str:
        """Absolute URL of the DICOMweb root, for RetrieveURL and BulkDataURI."""
        if self.settings.http.base_url:
            return self.settings.http.base_url.rstrip("/") + PREFIX
        url = request.base_url
        server = request.scope.get("server")
        # dicomweb-client sends "Host: <host>" without the port; when the client talks
        # to us directly (the Host names our bound address), add the port we listen on.
        if url.port is None and server and url.hostname == server[0]:
            default = 443 if url.scheme == "https" else 80
            if server[1] and server[1] != default:
                url = url.replace(port=server[1])
        return str(url).rstrip("/") + PREFIX

    async def read(self, func: Callable[..., T], *args: object) -> T:
        """Run blocking read work (files, index) in a worker thread."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter("read"))

    async def ingest(self, func: Callable[..., T], *args: object) -> T:
        """Run an ingest in a worker thread."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter("ingest"))


def study_url(root: str, study: str) -> str:
    return f"{root}/studies/{study}"


def series_url(root: str, study: str, series: str) -> str:
    return f"{root}/studies/{study}/series/{series}"


def instance_url(root: str, study: str, series: str, sop: str) -> str:
    return f"{root}/studies/{study}/series/{series}/instances/{sop}"
