"""What the store hands out: plain frozen records read from rows, and the small SQL helpers its parts share."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, cast

import numpy as np
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.orm import Session

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
    vector: np.ndarray
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


class Candidate(NamedTuple):
    """A search candidate's scoring columns (`Store.candidates`)."""

    id: int
    utility: float
    last_seen_at: float
    consolidated: bool
    vector: bytes  # float32, unit norm


def _data(row: Any) -> ExperienceData:
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


def _adapter(row: AdapterRow) -> AdapterData:
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


def _job(row: JobRow) -> JobData:
    return JobData(row.id, row.kind, row.tenant, row.status, row.progress, row.message, json.loads(row.params),
                   json.loads(row.metrics) if row.metrics is not None else None, row.error, row.pid, row.host,
                   row.heartbeat_at, row.created_at, row.started_at, row.finished_at)


def _figures(row: AdapterRow) -> str:
    metrics = json.loads(row.metrics)
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()) or "no figures"


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (`Session.execute` is typed as returning the generic Result)."""
    return int(cast("CursorResult[Any]", result).rowcount)


def _plain(value: Any) -> Any:
    """JSON for NumPy scalars and arrays in metrics (`float32(0.8)`, `array([...])`)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _locked(tx: Session, model: type[Any], key: Any) -> Any:
    """The row `key` of `model` re-read and locked until commit (SELECT ... FOR UPDATE; SQLite needs no row
    lock, one writer holds the whole file), so that a read-modify-write cannot overwrite another
    process's concurrent change with a stale value under PostgreSQL's read committed."""
    return tx.get(model, key, with_for_update=True, populate_existing=True)


def _created_locked(tx: Session, model: type[Any], values: dict[str, Any]) -> Any:
    """The row of `model` whose primary key is in `values`, inserted with `values` when absent, then locked
    as `_locked` does. The insert is `ON CONFLICT DO NOTHING`, so two transactions that create the same row
    at once (two processes writing a new tenant's first rows) wait for each other instead of one failing
    on the unique key."""
    dialect = {"postgresql": postgresql, "sqlite": sqlite}.get(tx.get_bind().dialect.name)
    key = tuple(values[c.name] for c in model.__table__.primary_key.columns)
    if dialect is not None:
        tx.execute(dialect.insert(model).values(**values).on_conflict_do_nothing())
    elif tx.get(model, key) is None:  # another dialect: no portable upsert, the plain check-then-add
        tx.add(model(**values))
        tx.flush()
    return _locked(tx, model, key)
