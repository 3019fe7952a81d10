"""Quarantine: rejected input is kept, byte for byte, with the reason it was refused."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined input."""

    id: str
    reason: str
    code: str
    received_at: str
    size: int
    source: dict[str, Any] = field(default_factory=dict)
    sop_instance_uid: str = ""

    @property
    def data_name(self) -> str:
        return f"{self.id}.bin"


class Quarantine:
    """Folder of quarantined inputs: ``<id>.bin`` with ``<id>.json`` (reason) beside it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(
        self,
        data: bytes | bytearray,
        *,
        reason: str,
        code: str,
        source: dict[str, Any] | None = None,
        sop_instance_uid: str = "",
    ) -> QuarantineEntry:
        """Keep ``data`` durably with its reason; returns the entry."""
        now = datetime.now(UTC)
        entry = QuarantineEntry(
            id=f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}",
            reason=reason,
            code=code,
            received_at=now.isoformat(),
            size=len(data),
            source=dict(source or {}),
            sop_instance_uid=sop_instance_uid,
        )
        _write_durable(self.root / entry.data_name, data)
        _write_durable(
            self.root / f"{entry.id}.json",
            json.dumps(asdict(entry), indent=2, sort_keys=True).encode(),
        )
        return entry

    def entries(self) -> Iterator[QuarantineEntry]:
        """Every entry, oldest first."""
        for meta in sorted(self.root.glob("*.json")):
            try:
                yield QuarantineEntry(**json.loads(meta.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                continue

    def data(self, entry_id: str) -> bytes:
        """The quarantined bytes of one entry."""
        return (self.root / f"{Path(entry_id).name}.bin").read_bytes()


def _write_durable(path: Path, data: bytes | bytearray) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
