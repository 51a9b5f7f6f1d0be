"""What the store hands out: plain frozen records, each with the function that reads it from its row."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from .schema import AdapterRow, JobRow


@dataclass(frozen=True)
class ExperienceData:
    """An experience as read from the store."""

    id: int
    tenant: str
    user: str | None
    instruction: str | None
    trigger: str
    response: str
    lesson: str | None
    rejected: str | None
    vector: np.ndarray  # empty where read without it (`Store.get_experiences(vectors=False)`)
    alpha: float
    beta: float
    support: int
    uses: int
    created_at: float
    last_seen_at: float
    consolidated_in: str | None

    @property
    def utility(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def with_vector(self, vector: np.ndarray) -> ExperienceData:
        """The same experience holding `vector` (a view of a matrix that holds it already: its own copy goes)."""
        return ExperienceData(self.id, self.tenant, self.user, self.instruction, self.trigger, self.response,
                              self.lesson, self.rejected, vector, self.alpha, self.beta, self.support, self.uses,
                              self.created_at, self.last_seen_at, self.consolidated_in)


class ScoringColumns(NamedTuple):
    """Experiences' scoring columns, in id order: id, utility (the Beta posterior mean), last seen (epoch s), and
    kept (not consolidated)."""

    ids: np.ndarray
    utility: np.ndarray
    seen: np.ndarray
    kept: np.ndarray

    @classmethod
    def of(cls, rows: Iterable[ExperienceData]) -> ScoringColumns:
        """Those of `rows`."""
        return cls.from_tuples([(r.id, r.alpha, r.beta, r.last_seen_at, r.consolidated_in) for r in rows])

    @classmethod
    def from_tuples(cls, rows: Iterable[tuple[Any, ...]]) -> ScoringColumns:
        """From (id, alpha, beta, last seen, consolidated in) tuples, in any order."""
        rows = sorted(rows)
        n = len(rows)
        return cls(np.fromiter((r[0] for r in rows), np.int64, n),
                   np.fromiter((r[1] / (r[1] + r[2]) for r in rows), np.float32, n),
                   np.fromiter((r[3] for r in rows), np.float64, n),
                   np.fromiter((r[4] is None for r in rows), np.bool_, n))


def experience_data(row: Any) -> ExperienceData:
    return ExperienceData(row.id, row.tenant, row.user, row.instruction, row.trigger, row.response, row.lesson,
                          row.rejected, np.frombuffer(row.vector, dtype=np.float32), row.alpha, row.beta,
                          row.support, row.uses, row.created_at, row.last_seen_at, row.consolidated_in)


@dataclass(frozen=True)
class AdapterData:
    """An adapter as read from the store."""

    version: str
    tenant: str
    base_model: str
    method: str
    seed: int
    status: str  # promoted | rejected | stale
    active: bool
    previous: str | None
    metrics: dict[str, Any]
    covered: tuple[int, ...]  # experience ids it was trained on
    path: str
    created_at: float
    stale_at: float | None  # set (whatever the status) once an experience it covers is forgotten
    parent: str | None = None  # the adapter it was trained on from; None: from the base model
    holdout: tuple[int, ...] = ()  # experience ids its gate held out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "covered": list(self.covered), "holdout": list(self.holdout)}


def adapter_data(row: AdapterRow) -> AdapterData:
    return AdapterData(row.version, row.tenant, row.base_model, row.method, row.seed, row.status, bool(row.active),
                       row.previous, json.loads(row.metrics), tuple(json.loads(row.covered)), row.path,
                       row.created_at, row.stale_at, row.parent, tuple(json.loads(row.holdout or "[]")))


@dataclass(frozen=True)
class JobData:
    """A job as read from the store."""

    id: int
    kind: str
    tenant: str
    status: str  # queued | running | succeeded | rejected | failed
    progress: float
    message: str | None
    params: dict[str, Any]
    metrics: dict[str, Any] | None
    error: str | None
    pid: int | None
    host: str | None
    heartbeat_at: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def job_data(row: JobRow) -> JobData:
    return JobData(row.id, row.kind, row.tenant, row.status, row.progress, row.message, json.loads(row.params),
                   json.loads(row.metrics) if row.metrics is not None else None, row.error, row.pid, row.host,
                   row.heartbeat_at, row.created_at, row.started_at, row.finished_at)
