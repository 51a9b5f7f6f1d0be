"""logmem.memory: from raw logs to ranked experiences (no language model involved)."""

from .answers import FeedbackResult
from .archive import ImportReport
from .config import MemoryConfig
from .embedding import Embedder
from .errors import (
                     AdapterError,
                     ArchiveError,
                     ConfigError,
                     DimensionMismatchError,
                     JobConflictError,
                     JobStateError,
                     LogFormatError,
                     LogmemError,
                     NotFoundError,
                     StoreError,
)
from .ingest import Imported, IngestReport
from .logs import Feedback, Interaction, Message, Rejected, parse_record, read_jsonl
from .memory import VectorMemory
from .search import Hit
from .stats import Stats

__all__ = [
    "AdapterError", "ArchiveError", "ConfigError", "DimensionMismatchError", "Embedder", "Feedback", "FeedbackResult",
    "Hit",
    "ImportReport", "Imported", "IngestReport",
    "Interaction", "JobConflictError", "JobStateError", "LogFormatError", "LogmemError", "MemoryConfig", "Message",
    "NotFoundError", "Rejected", "Stats", "StoreError", "VectorMemory", "parse_record", "read_jsonl",
]
