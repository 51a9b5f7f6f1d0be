"""Exceptions of logmem. Each also inherits the built-in a caller would naturally catch."""

from __future__ import annotations


class LogmemError(Exception):
    """Root of every error logmem raises on purpose."""


class ConfigError(LogmemError, ValueError):
    """A configuration value is out of its allowed range."""


class DimensionMismatchError(LogmemError, ValueError):
    """Vectors do not have the width the index or memory expects."""


class NotFoundError(LogmemError, KeyError):
    """An id (experience, interaction, adapter, job) does not exist for this tenant."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class UnknownModelError(NotFoundError):
    """A request names a model this server does not serve to its caller."""

    param = "model"
    code = "model_not_found"


class LogFormatError(LogmemError, ValueError):
    """One log record cannot be read; names where (source, line, field) and why."""

    def __init__(self, reason: str, *, source: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.reason = reason
        self.source = source
        self.line = line
        self.field = field
        super().__init__(self.describe())

    def describe(self) -> str:
        where = []
        if self.source is not None:
            where.append(str(self.source))
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason

    def located(self, *, source: str | None = None, line: int | None = None) -> LogFormatError:
        """The same error with its file and line filled in."""
        return LogFormatError(self.reason, source=source if source is not None else self.source,
                              line=line if line is not None else self.line, field=self.field)


class ArchiveError(LogmemError, ValueError):
    """A tenant archive cannot be imported (truncated, tampered with, another format or embedder); names the archive,
    its member, the line and field where there is one, and why. Raised before anything is written."""

    def __init__(self, reason: str, *, archive: str | None = None, member: str | None = None,
                 line: int | None = None, field: str | None = None) -> None:
        self.reason, self.archive, self.member, self.line, self.field = reason, archive, member, line, field
        where = [str(w) for w in (archive, member) if w is not None]
        where += [f"line {line}"] if line is not None else []
        where += [f"field '{field}'"] if field is not None else []
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


class StoreError(LogmemError, RuntimeError):
    """The SQL store is unusable (schema from another version, different embedder, ...)."""


class AdapterError(LogmemError, ValueError):
    """An adapter cannot take that step (activating a rejected or stale one, another tenant's, ...)."""


class JobStateError(LogmemError, RuntimeError):
    """A job is not in the state the step needs (running a finished job, retrying a running one)."""


class JobConflictError(JobStateError):
    """Another job of the same tenant is running: two jobs never train one tenant at once."""


class NotEnoughDataError(LogmemError, ValueError):
    """The tenant's memory holds too little for the step asked (a consolidation with fewer new experiences than it
    needs): a state to change first, not a bad argument."""


class PromptTooLongError(LogmemError, ValueError):
    """A request's messages are longer than the model's prompt-token limit (refused before any model work)."""

    param = "messages"
    code = "context_length_exceeded"


class GenerationCancelled(LogmemError, RuntimeError):
    """A generation was stopped before its end: its client went away, or the server is shutting down."""
