"""Archive domain: storage area, index, quarantine, ingest and queries.

Other domains use only what is exported here.
"""

from ciams.archive.index import IndexOutcome, IndexRequest
from ciams.archive.parse import ParsedInstance, parse_instance
from ciams.archive.quarantine import Quarantine, QuarantineEntry
from ciams.archive.query import COLUMNS, COMPUTED, EVERYTHING, LEVELS, FindQuery, Level, Scope
from ciams.archive.service import (
    Archive,
    FsckReport,
    IngestResult,
    InstanceRef,
    StudySummary,
)
from ciams.archive.storage import LocalStorage, StorageArea, content_key

__all__ = [
    "COLUMNS",
    "COMPUTED",
    "EVERYTHING",
    "LEVELS",
    "Archive",
    "FindQuery",
    "FsckReport",
    "IndexOutcome",
    "IndexRequest",
    "IngestResult",
    "InstanceRef",
    "Level",
    "LocalStorage",
    "ParsedInstance",
    "Quarantine",
    "QuarantineEntry",
    "Scope",
    "StorageArea",
    "StudySummary",
    "content_key",
    "parse_instance",
]
