"""The SQL store: the source of truth for interactions, feedback, experiences and index state.

The only module that imports SQLAlchemy. SQLite (WAL, secure_delete) by default; any SQLAlchemy URL
(PostgreSQL through psycopg) otherwise. Experience vectors are stored here too, so a lost or stale
faiss index is rebuilt from SQL without re-embedding anything.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .errors import AdapterError, JobConflictError, JobStateError, NotFoundError, StoreError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
Tally = Callable[[dict[str, Any]], dict[str, int]]  # an interaction record -> the leading paragraphs it counted
Tx = Session  # an open transaction, as `Store.transaction()` yields it (other modules name it without SQLAlchemy)


class Base(DeclarativeBase):
    pass


class InteractionRow(Base):
    __tablename__ = "interactions"
    __table_args__ = (UniqueConstraint("tenant", "ext_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    ext_id: Mapped[str] = mapped_column(String(200))
    user: Mapped[str | None] = mapped_column(String(200), index=True)
    session: Mapped[str | None] = mapped_column(String(200))
    timestamp: Mapped[float | None] = mapped_column(Float)
    record: Mapped[str] = mapped_column(Text)  # the native-schema JSON of the whole interaction
    status: Mapped[str] = mapped_column(String(20))  # experience | merged | filtered
    ingested_at: Mapped[float] = mapped_column(Float)


class FeedbackRow(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    interaction_id: Mapped[int] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"), index=True)
    turn: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    value: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str | None] = mapped_column(Text)


class ExperienceRow(Base):
    __tablename__ = "experiences"
    __table_args__ = (UniqueConstraint("tenant", "content_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    user: Mapped[str | None] = mapped_column(String(200), index=True)  # whose interaction gave the text
    content_hash: Mapped[str] = mapped_column(String(64))
    instruction: Mapped[str | None] = mapped_column(Text)  # the shared instruction the trigger carried
    trigger: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    lesson: Mapped[str | None] = mapped_column(Text)
    rejected: Mapped[str | None] = mapped_column(Text)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, unit norm
    alpha: Mapped[float] = mapped_column(Float)  # Beta posterior of utility
    beta: Mapped[float] = mapped_column(Float)
    support: Mapped[int] = mapped_column(Integer, default=1)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)  # time of the first supporting interaction
    last_seen_at: Mapped[float] = mapped_column(Float)  # time of the latest one
    consolidated_in: Mapped[str | None] = mapped_column(String(64))


class SourceRow(Base):
    """Which interactions support which experience (for merge counts and forgetting by user)."""

    __tablename__ = "experience_sources"
    experience_id: Mapped[int] = mapped_column(ForeignKey("experiences.id", ondelete="CASCADE"), primary_key=True)
    interaction_id: Mapped[int] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"),
                                                primary_key=True, index=True)


class AuthorRow(Base):
    """Users whose words an experience's text holds besides its creator (`ExperienceRow.user`): those who
    gave an answer that took the experience's place in a conflict swap. Forgetting any of them deletes it."""

    __tablename__ = "experience_authors"
    experience_id: Mapped[int] = mapped_column(ForeignKey("experiences.id", ondelete="CASCADE"), primary_key=True)
    user: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)


class RetrievalRow(Base):
    """Which experiences a logged interaction had in its prompt (its record's `metadata.retrieved`): the
    requests that used an experience and went well become more training inputs for it."""

    __tablename__ = "retrievals"
    interaction_id: Mapped[int] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"), primary_key=True)
    experience_id: Mapped[int] = mapped_column(ForeignKey("experiences.id", ondelete="CASCADE"), primary_key=True,
                                               index=True)


class ConflictRow(Base):
    """A different accepted answer to a near-duplicate trigger, with its own support."""

    __tablename__ = "conflicts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experience_id: Mapped[int] = mapped_column(ForeignKey("experiences.id", ondelete="CASCADE"), index=True)
    interaction_id: Mapped[int | None] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"))
    response: Mapped[str] = mapped_column(Text)


class InstructionRow(Base):
    __tablename__ = "instructions"
    tenant: Mapped[str] = mapped_column(String(200), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    count: Mapped[int] = mapped_column(Integer)


class IndexStateRow(Base):
    """Per tenant, a counter bumped by every change to its vectors; an index file saved at another
    generation is stale and gets rebuilt from SQL."""

    __tablename__ = "index_state"
    tenant: Mapped[str] = mapped_column(String(200), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)


class MetaRow(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


ADAPTER_METHODS = ("sft", "kd", "sft+kd")
ADAPTER_STATUSES = ("promoted", "rejected", "stale")


class AdapterRow(Base):
    """A trained LoRA adapter of one tenant. Versions are "v1", "v2", ... numbered across the whole store, so
    that a version alone (`consolidated_in`, the CLI) names one adapter."""

    __tablename__ = "adapters"
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    base_model: Mapped[str] = mapped_column(String(500))
    method: Mapped[str] = mapped_column(String(20))  # sft | kd | sft+kd
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))  # promoted | rejected | stale (promoted, then data forgotten)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    previous: Mapped[str | None] = mapped_column(String(64))  # active before this one was activated
    metrics: Mapped[str] = mapped_column(Text)  # JSON: the gate's figures
    covered: Mapped[str] = mapped_column(Text)  # JSON list of the experience ids it was trained on
    path: Mapped[str] = mapped_column(Text)  # the adapter's folder
    created_at: Mapped[float] = mapped_column(Float)
    stale_at: Mapped[float | None] = mapped_column(Float)  # when an experience it covers was forgotten


# At most one active adapter per tenant, held by the database itself (SQLite and PostgreSQL both).
Index("one_active_adapter_per_tenant", AdapterRow.tenant, unique=True, sqlite_where=AdapterRow.active,
      postgresql_where=AdapterRow.active)

JOB_STATUSES = ("queued", "running", "succeeded", "rejected", "failed")


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(40))
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)  # queued | running | succeeded | rejected | failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    message: Mapped[str | None] = mapped_column(Text)  # the latest progress line ("step 12/80 loss 1.23")
    params: Mapped[str] = mapped_column(Text)  # JSON
    metrics: Mapped[str | None] = mapped_column(Text)  # JSON
    error: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


# Two jobs never run on one tenant at once: a second start fails on this index, atomically, in both databases.
Index("one_running_job_per_tenant", JobRow.tenant, unique=True, sqlite_where=JobRow.status == "running",
      postgresql_where=JobRow.status == "running")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA secure_delete=ON")  # deleted text is overwritten, not left in free pages
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


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


def _data(row: ExperienceRow) -> ExperienceData:
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

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "covered": list(self.covered)}


def _adapter(row: AdapterRow) -> AdapterData:
    return AdapterData(row.version, row.tenant, row.base_model, row.method, row.seed, row.status, bool(row.active),
                       row.previous, json.loads(row.metrics), tuple(json.loads(row.covered)), row.path,
                       row.created_at, row.stale_at)


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


class Store:
    """Repository over the SQL database. Write methods take the open transaction `tx` first."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One atomic unit of work: committed on success, rolled back on any exception."""
        with Session(self.engine, expire_on_commit=False) as tx:
            with tx.begin():
                yield tx

    # --- meta -------------------------------------------------------------------------------
    def check_meta(self, *, embedder: str, dim: int) -> None:
        """Pin the embedder and width on first use; refuse a memory made with another embedder."""
        want = {"schema": SCHEMA_VERSION, "embedder": embedder, "dim": str(dim)}
        with self.transaction() as tx:
            have = {r.key: r.value for r in tx.scalars(select(MetaRow))}
            for key, value in want.items():
                if key not in have:
                    tx.add(MetaRow(key=key, value=value))
                elif have[key] != value:
                    raise StoreError(f"this memory was built with {key}={have[key]!r}, not {value!r}; "
                                     "use the same embedder or a new home")

    # --- interactions -----------------------------------------------------------------------
    def known_interactions(self, tx: Session, *, tenant: str, ext_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ext_ids), 500):
            chunk = list(ext_ids[i:i + 500])
            found.update(tx.scalars(select(InteractionRow.ext_id).where(
                InteractionRow.tenant == tenant, InteractionRow.ext_id.in_(chunk))))
        return found

    def add_interaction(self, tx: Session, *, record: dict[str, Any], status: str) -> int:
        row = InteractionRow(tenant=record["tenant"], ext_id=record["id"], user=record.get("user"),
                             session=record.get("session"), timestamp=record.get("timestamp"),
                             record=json.dumps(record, ensure_ascii=False), status=status,
                             ingested_at=time.time())
        tx.add(row)
        tx.flush()
        for f in record.get("feedback", []):
            tx.add(FeedbackRow(interaction_id=row.id, turn=f["turn"], kind=f["kind"], value=f.get("value"),
                               text=f.get("text")))
        return row.id

    def add_retrievals(self, tx: Session, *, tenant: str, interaction_id: int, experience_ids: Iterable[int]) -> int:
        """Link an interaction to the experiences it retrieved; ids not of `tenant`'s experiences are ignored
        (a record never reaches another tenant's rows). Returns the number linked."""
        wanted = sorted({int(i) for i in experience_ids})
        found = list(tx.scalars(select(ExperienceRow.id).where(ExperienceRow.tenant == tenant,
                                                               ExperienceRow.id.in_(wanted)))) if wanted else []
        tx.add_all([RetrievalRow(interaction_id=interaction_id, experience_id=i) for i in found])
        return len(found)

    def retrieving_records(self, *, tenant: str, experience_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """Per experience, the records of the logged interactions that had it in their prompt."""
        out: dict[int, list[dict[str, Any]]] = {}
        with Session(self.engine) as s:
            for i in range(0, len(experience_ids), 500):
                chunk = [int(e) for e in experience_ids[i:i + 500]]
                rows = s.execute(select(RetrievalRow.experience_id, InteractionRow.record)
                                 .join(InteractionRow, InteractionRow.id == RetrievalRow.interaction_id)
                                 .where(InteractionRow.tenant == tenant, RetrievalRow.experience_id.in_(chunk))
                                 .order_by(RetrievalRow.experience_id, InteractionRow.id))
                for exp_id, record in rows:
                    out.setdefault(exp_id, []).append(json.loads(record))
        return out

    def set_status(self, tx: Session, *, interaction_id: int, status: str) -> None:
        tx.get_one(InteractionRow, interaction_id).status = status

    def add_feedback(self, tx: Session, *, tenant: str, ext_id: str, turn: int, kind: str,
                     value: float | None = None, text: str | None = None) -> None:
        pk = tx.scalar(select(InteractionRow.id).where(InteractionRow.tenant == tenant,
                                                       InteractionRow.ext_id == ext_id))
        if pk is None:
            raise NotFoundError(f"no interaction {ext_id!r} in tenant {tenant!r}")
        tx.add(FeedbackRow(interaction_id=pk, turn=turn, kind=kind, value=value, text=text))

    # --- experiences ------------------------------------------------------------------------
    def experience_by_hash(self, tx: Session, *, tenant: str, content_hash: str) -> int | None:
        return tx.scalar(select(ExperienceRow.id).where(ExperienceRow.tenant == tenant,
                                                        ExperienceRow.content_hash == content_hash))

    def add_experience(self, tx: Session, *, tenant: str, user: str | None, content_hash: str,
                       instruction: str | None, trigger: str, response: str, lesson: str | None,
                       rejected: str | None, vector: np.ndarray, alpha: float, beta: float,
                       timestamp: float, interaction_id: int) -> int:
        row = ExperienceRow(tenant=tenant, user=user, content_hash=content_hash, instruction=instruction,
                            trigger=trigger, response=response, lesson=lesson, rejected=rejected,
                            vector=np.asarray(vector, dtype=np.float32).tobytes(), alpha=alpha, beta=beta,
                            support=1, uses=0, created_at=timestamp, last_seen_at=timestamp)
        tx.add(row)
        tx.flush()
        tx.add(SourceRow(experience_id=row.id, interaction_id=interaction_id))
        return row.id

    def merge_into(self, tx: Session, *, experience_id: int, interaction_id: int, timestamp: float,
                   success: float) -> None:
        """Count one more supporting interaction (a duplicate) on `experience_id`.

        Only the count and times are taken: an experience's text all comes from the one interaction that
        created it, so forgetting a user who merely agreed leaves none of their words behind.
        """
        row = _locked(tx, ExperienceRow, experience_id)
        if row is None:
            raise NotFoundError(f"no experience {experience_id}")
        row.support += 1
        row.alpha += success
        row.beta += 1.0 - success
        row.created_at = min(row.created_at, timestamp)
        row.last_seen_at = max(row.last_seen_at, timestamp)
        tx.add(SourceRow(experience_id=experience_id, interaction_id=interaction_id))

    def add_conflict(self, tx: Session, *, experience_id: int, interaction_id: int, response: str,
                     swap_hash: str) -> bool:
        """Record a conflicting answer. When its support outgrows the experience's, it takes its place
        (and the old answer becomes the conflict). Returns whether the answer was swapped.

        `swap_hash` is the content hash of the experience's trigger with `response`: the experience takes
        it on a swap, so that a later exact copy of the old answer counts as a conflict, not as support."""
        row = _locked(tx, ExperienceRow, experience_id)  # first: concurrent conflicts on it count in turn
        if row is None:
            raise NotFoundError(f"no experience {experience_id}")
        tx.add(ConflictRow(experience_id=experience_id, interaction_id=interaction_id, response=response))
        tx.flush()
        same = tx.scalar(select(func.count()).select_from(ConflictRow).where(
            ConflictRow.experience_id == experience_id, ConflictRow.response == response)) or 0
        if same <= row.support:
            return False
        authors = {u for u in tx.scalars(select(InteractionRow.user).join(
            ConflictRow, ConflictRow.interaction_id == InteractionRow.id).where(
            ConflictRow.experience_id == experience_id, ConflictRow.response == response,
            InteractionRow.user.is_not(None))) if u is not None}
        known = set(tx.scalars(select(AuthorRow.user).where(AuthorRow.experience_id == experience_id)))
        tx.add_all([AuthorRow(experience_id=experience_id, user=u) for u in sorted(authors - known - {row.user})])
        tx.execute(delete(ConflictRow).where(ConflictRow.experience_id == experience_id,
                                             ConflictRow.response == response))
        for _ in range(row.support):
            tx.add(ConflictRow(experience_id=experience_id, interaction_id=None, response=row.response))
        row.response, row.support = response, same
        if self.experience_by_hash(tx, tenant=row.tenant, content_hash=swap_hash) is None:  # keep it unique
            row.content_hash = swap_hash
        return True

    def get_experiences(self, tx: Session | None = None, *, tenant: str,
                        ids: Iterable[int]) -> dict[int, ExperienceData]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        with self._reader(tx) as s:
            rows = s.scalars(select(ExperienceRow).where(ExperienceRow.tenant == tenant,
                                                         ExperienceRow.id.in_(ids)))
            return {r.id: _data(r) for r in rows}

    def iter_experiences(self, *, tenant: str, batch: int = 10_000) -> Iterator[ExperienceData]:
        with Session(self.engine) as s:
            last = 0
            while True:
                rows = list(s.scalars(select(ExperienceRow).where(ExperienceRow.tenant == tenant,
                                                                  ExperienceRow.id > last)
                                      .order_by(ExperienceRow.id).limit(batch)))
                if not rows:
                    return
                yield from (_data(r) for r in rows)
                last = rows[-1].id
                s.expunge_all()

    def vectors(self, *, tenant: str, d: int) -> tuple[np.ndarray, np.ndarray]:
        """All of a tenant's experience ids (int64, (n,)) and vectors (float32, (n, d))."""
        with Session(self.engine) as s:
            rows = s.execute(select(ExperienceRow.id, ExperienceRow.vector)
                             .where(ExperienceRow.tenant == tenant).order_by(ExperienceRow.id)).all()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        xb = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), d)
        return ids, xb

    def record_outcome(self, *, tenant: str, ids: Sequence[int], success: float) -> int:
        """Credit an outcome to experiences: utility Beta(alpha, beta) gains (success, 1 - success)."""
        with self.transaction() as tx:
            res = tx.execute(update(ExperienceRow).where(ExperienceRow.tenant == tenant,
                                                         ExperienceRow.id.in_([int(i) for i in ids]))
                             .values(alpha=ExperienceRow.alpha + success,
                                     beta=ExperienceRow.beta + (1.0 - success)))
            return _rowcount(res)

    def count_uses(self, *, tenant: str, ids: Sequence[int]) -> None:
        with self.transaction() as tx:
            tx.execute(update(ExperienceRow).where(ExperienceRow.tenant == tenant,
                                                   ExperienceRow.id.in_([int(i) for i in ids]))
                       .values(uses=ExperienceRow.uses + 1))

    # --- shared instructions ----------------------------------------------------------------
    def count_instructions(self, tx: Session, *, tenant: str, counts: dict[str, tuple[str, int]]) -> None:
        """Add `counts` (hash -> (text, n)) to the tenant's tally of leading paragraphs."""
        for h, (text, n) in counts.items():
            row = _locked(tx, InstructionRow, (tenant, h))
            if row is None:
                tx.add(InstructionRow(tenant=tenant, content_hash=h, text=text, count=n))
            else:
                row.count += n
        tx.flush()

    def instructions(self, *, tenant: str, min_count: int, tx: Session | None = None) -> set[str]:
        with self._reader(tx) as s:
            return set(s.scalars(select(InstructionRow.text).where(InstructionRow.tenant == tenant,
                                                                   InstructionRow.count >= min_count)))

    # --- index state ------------------------------------------------------------------------
    def bump_generation(self, tx: Session, *, tenant: str) -> int:
        """Count one more change to the tenant's vectors; returns the new generation."""
        row = _locked(tx, IndexStateRow, tenant)
        if row is None:
            row = IndexStateRow(tenant=tenant, generation=0)
            tx.add(row)
        row.generation += 1
        tx.flush()
        return row.generation

    def generation(self, *, tenant: str) -> int:
        with Session(self.engine) as s:
            return s.scalar(select(IndexStateRow.generation).where(IndexStateRow.tenant == tenant)) or 0

    def tenants(self) -> list[str]:
        with Session(self.engine) as s:
            names = set(s.scalars(select(InteractionRow.tenant).distinct()))
            names |= set(s.scalars(select(ExperienceRow.tenant).distinct()))
            return sorted(names)

    # --- adapters ---------------------------------------------------------------------------
    def add_adapter(self, *, tenant: str, base_model: str, method: str, seed: int, status: str,
                    metrics: dict[str, Any], covered: Iterable[int], path: str) -> str:
        """Register a trained adapter (inactive); returns its version, the next "v<n>" of the store."""
        if method not in ADAPTER_METHODS:
            raise AdapterError(f"adapter method must be one of {', '.join(ADAPTER_METHODS)}, got {method!r}")
        if status not in ("promoted", "rejected"):
            raise AdapterError(f"a new adapter is 'promoted' or 'rejected' by the gate, got {status!r}")
        fields = dict(tenant=tenant, base_model=base_model, method=method, seed=int(seed), status=status,
                      active=False, metrics=json.dumps(metrics, default=_plain),
                      covered=json.dumps(sorted({int(i) for i in covered})), path=str(path), created_at=time.time())
        for attempt in range(10):  # two writers may pick the same number: the primary key sends one round again
            try:
                with self.transaction() as tx:
                    numbers = [int(m.group(1)) for v in tx.scalars(select(AdapterRow.version))
                               if (m := re.fullmatch(r"v(\d+)", v))]
                    version = f"v{max(numbers, default=0) + 1}"
                    tx.add(AdapterRow(version=version, **fields))
                return version
            except IntegrityError:
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def adapters(self, *, tenant: str | None) -> list[AdapterData]:
        """The adapters of `tenant` (of every tenant if None), oldest first."""
        with Session(self.engine) as s:
            stmt = select(AdapterRow) if tenant is None else select(AdapterRow).where(AdapterRow.tenant == tenant)
            rows = [_adapter(r) for r in s.scalars(stmt)]
        return sorted(rows, key=lambda a: (a.created_at, len(a.version), a.version))

    def get_adapter(self, *, version: str) -> AdapterData:
        with Session(self.engine) as s:
            row = s.get(AdapterRow, version)
            if row is None:
                raise NotFoundError(f"no adapter {version!r}")
            return _adapter(row)

    def active_adapter(self, *, tenant: str) -> AdapterData | None:
        """The adapter the tenant's generator loads, or None for the base model."""
        with Session(self.engine) as s:
            row = s.scalar(select(AdapterRow).where(AdapterRow.tenant == tenant, AdapterRow.active.is_(True)))
            return _adapter(row) if row is not None else None

    def activate_adapter(self, *, tenant: str, version: str, force: bool = False) -> AdapterData:
        """Make `version` the tenant's active adapter; the one it replaces becomes its `previous`.

        Raises:
            NotFoundError: no such version in this tenant.
            AdapterError: the gate rejected it, or (unless `force`) it is stale.
        """
        with self.transaction() as tx:
            self._lock_adapters(tx, tenant=tenant)
            row = tx.get(AdapterRow, version, populate_existing=True)
            if row is None or row.tenant != tenant:
                raise NotFoundError(f"no adapter {version!r} in tenant {tenant!r}")
            if row.status == "rejected":
                raise AdapterError(f"adapter {version} was rejected by the gate ({_figures(row)}); "
                                   "a rejected adapter cannot be activated")
            if row.status == "stale" and not force:
                raise AdapterError(f"adapter {version} is stale: experiences it was trained on have been forgotten; "
                                   "retrain with `consolidate --rebuild`, or activate it anyway with force")
            if not row.active:
                current = tx.scalar(select(AdapterRow).where(AdapterRow.tenant == tenant,
                                                             AdapterRow.active.is_(True)))
                if current is not None:
                    current.active = False
                    tx.flush()  # the one-active index is checked row by row: switch the old one off first
                row.active, row.previous = True, current.version if current is not None else None
            return _adapter(row)

    def rollback_adapter(self, *, tenant: str) -> str | None:
        """Re-activate the active adapter's `previous` (its own `previous` kept, so rollbacks walk back the
        chain); with none, deactivate all (the base model). Stale or rejected ones on the way are passed over.
        Returns the version now active, or None for the base model."""
        with self.transaction() as tx:
            self._lock_adapters(tx, tenant=tenant)
            current = tx.scalar(select(AdapterRow).where(AdapterRow.tenant == tenant, AdapterRow.active.is_(True)))
            if current is None:
                return None
            target, seen = tx.get(AdapterRow, current.previous) if current.previous else None, {current.version}
            while target is not None and (target.status != "promoted" or target.tenant != tenant):
                logger.warning("rollback passes over adapter %s of tenant %r: it is %s", target.version, tenant,
                               target.status)
                seen.add(target.version)
                nxt = target.previous
                target = tx.get(AdapterRow, nxt) if nxt and nxt not in seen else None
            current.active = False
            tx.flush()
            if target is None:
                return None
            target.active = True
            return target.version

    def mark_consolidated(self, *, tenant: str, experience_ids: Iterable[int], version: str) -> int:
        """Set `consolidated_in = version` on the tenant's experiences; returns how many were marked."""
        ids = [int(i) for i in experience_ids]
        with self.transaction() as tx:
            row = tx.get(AdapterRow, version)
            if row is None or row.tenant != tenant:
                raise NotFoundError(f"no adapter {version!r} in tenant {tenant!r}")
            marked = 0
            for i in range(0, len(ids), 500):
                marked += _rowcount(tx.execute(update(ExperienceRow).where(
                    ExperienceRow.tenant == tenant, ExperienceRow.id.in_(ids[i:i + 500]))
                    .values(consolidated_in=version).execution_options(synchronize_session=False)))
            return int(marked)

    def _lock_adapters(self, tx: Session, *, tenant: str) -> None:
        """Serialize activations of one tenant. SQLite: a write as the transaction's first statement takes the
        database's write lock (pysqlite begins a transaction only at the first write, so reads before it
        would hold nothing). PostgreSQL: row locks on the tenant's adapters, in version order, so that two
        activations cannot deadlock."""
        if self.engine.dialect.name == "sqlite":
            tx.execute(update(AdapterRow).where(AdapterRow.tenant == tenant).values(active=AdapterRow.active)
                       .execution_options(synchronize_session=False))
        else:
            tx.execute(select(AdapterRow.version).where(AdapterRow.tenant == tenant).order_by(AdapterRow.version)
                       .with_for_update())

    def _mark_stale(self, tx: Session, *, tenants: set[str], forgotten: set[int]) -> None:
        if not forgotten or not tenants:
            return
        now = time.time()
        for row in tx.scalars(select(AdapterRow).where(AdapterRow.tenant.in_(sorted(tenants)))
                              .order_by(AdapterRow.version).with_for_update()):  # the lock order of activations
            if forgotten.isdisjoint(json.loads(row.covered)):
                continue
            if row.status == "promoted":
                row.status = "stale"
            row.stale_at = row.stale_at or now
            logger.warning("adapter %s of tenant %r was trained on forgotten experiences: marked stale%s",
                           row.version, row.tenant, " (it is still active)" if row.active else "")

    # --- jobs -------------------------------------------------------------------------------
    def add_job(self, *, kind: str, tenant: str, params: dict[str, Any]) -> int:
        """A new queued job; returns its id."""
        with self.transaction() as tx:
            row = JobRow(kind=kind, tenant=tenant, status="queued", progress=0.0, params=json.dumps(params),
                         created_at=time.time())
            tx.add(row)
            tx.flush()
            return row.id

    def get_job(self, *, job_id: int) -> JobData:
        with Session(self.engine) as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            return _job(row)

    def jobs(self, *, tenant: str | None = None, status: str | None = None) -> list[JobData]:
        """Jobs by id, optionally of one tenant and in one status."""
        stmt = select(JobRow).order_by(JobRow.id)
        if tenant is not None:
            stmt = stmt.where(JobRow.tenant == tenant)
        if status is not None:
            stmt = stmt.where(JobRow.status == status)
        with Session(self.engine) as s:
            return [_job(r) for r in s.scalars(stmt)]

    def start_job(self, *, job_id: int, pid: int, host: str) -> JobData:
        """queued -> running, atomically.

        Raises:
            JobConflictError: another job of the tenant is running (the one-running index refused this one).
            JobStateError: the job is not queued.
        """
        now = time.time()
        try:
            with self.transaction() as tx:
                done = _rowcount(tx.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "queued")
                                            .values(status="running", pid=pid, host=host, started_at=now,
                                                    heartbeat_at=now).execution_options(synchronize_session=False)))
        except IntegrityError:
            job = self.get_job(job_id=job_id)
            other = [j.id for j in self.jobs(tenant=job.tenant, status="running")]
            raise JobConflictError(f"job {other[0] if other else '?'} is already running on tenant {job.tenant!r}; "
                                   f"job {job_id} stays queued") from None
        job = self.get_job(job_id=job_id)
        if not done:
            raise JobStateError(f"job {job_id} is {job.status}, not queued: only a queued job can start "
                                "(retry makes a new one)")
        return job

    def update_job(self, *, job_id: int, progress: float | None = None, message: str | None = None) -> bool:
        """Write progress and heartbeat of a running job; False if it no longer runs (recovered elsewhere)."""
        values: dict[str, Any] = {"heartbeat_at": time.time()}
        if progress is not None:
            values.update(progress=progress, message=message)
        with self.transaction() as tx:
            return bool(_rowcount(tx.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running")
                                             .values(**values).execution_options(synchronize_session=False))))

    def finish_job(self, *, job_id: int, status: str, pid: int, host: str, progress: float,
                   message: str | None, metrics: dict[str, Any] | None = None, error: str | None = None) -> bool:
        """running -> `status`, only if still running under this `pid` and `host`; returns whether it did."""
        if status not in ("succeeded", "rejected", "failed"):
            raise JobStateError(f"a job finishes 'succeeded', 'rejected' or 'failed', not {status!r}")
        values = dict(status=status, progress=progress, message=message, error=error, finished_at=time.time(),
                      metrics=json.dumps(metrics, default=_plain) if metrics is not None else None)
        with self.transaction() as tx:
            return bool(_rowcount(tx.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running",
                                                                  JobRow.pid == pid, JobRow.host == host)
                                             .values(**values).execution_options(synchronize_session=False))))

    def fail_lost_job(self, *, job_id: int, heartbeat_at: float | None, error: str) -> bool:
        """running -> failed, only if its heartbeat is still `heartbeat_at` (it did not beat meanwhile)."""
        beat = JobRow.heartbeat_at.is_(None) if heartbeat_at is None else JobRow.heartbeat_at == heartbeat_at
        with self.transaction() as tx:
            return bool(_rowcount(tx.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running", beat)
                                             .values(status="failed", error=error, finished_at=time.time())
                                             .execution_options(synchronize_session=False))))

    # --- forgetting -------------------------------------------------------------------------
    def forget(self, *, tenant: str | None = None, user: str | None = None, experience_id: int | None = None,
               tally: Tally | None = None) -> tuple[dict[str, int], set[str]]:
        """Delete rows; return counts per table and the tenants whose vectors changed.

        By user: their interactions and feedback; experiences whose text came from them (created by them, or
        answered by them through a conflict swap); their support is taken off experiences they only agreed
        with (text that never was theirs stays). `tally(record)` gives the leading paragraphs (hash -> n)
        a deleted interaction added to the instructions tally; they are taken off, and a paragraph nobody
        else sent goes. Adapters trained on a deleted experience are marked stale (their files stay:
        `consolidate --rebuild` replaces them).
        """
        with self.transaction() as tx:
            if experience_id is not None:
                row = tx.get(ExperienceRow, experience_id)
                if row is None or (tenant is not None and row.tenant != tenant):
                    raise NotFoundError(f"no experience {experience_id}" + (f" in tenant {tenant!r}" if tenant else ""))
                # the interactions it came from hold its text too
                pks = list(tx.scalars(select(SourceRow.interaction_id).where(SourceRow.experience_id == row.id)))
                self._untally(tx, pks, tally)
                tx.delete(row)
                if pks:
                    tx.execute(delete(InteractionRow).where(InteractionRow.id.in_(pks)))
                changed, forgotten = {row.tenant}, {row.id}
                counts = {"experiences": 1, "interactions": len(pks)}
            elif user is not None:
                counts, changed, forgotten = self._forget_user(tx, user=user, tenant=tenant, tally=tally)
            elif tenant is not None:
                forgotten = set(tx.scalars(delete(ExperienceRow).where(ExperienceRow.tenant == tenant)
                                           .returning(ExperienceRow.id)))
                n_int = _rowcount(tx.execute(delete(InteractionRow).where(InteractionRow.tenant == tenant)))
                tx.execute(delete(InstructionRow).where(InstructionRow.tenant == tenant))
                counts, changed = {"experiences": len(forgotten), "interactions": int(n_int)}, {tenant}
            else:
                raise ValueError("forget needs an experience id, a user or a tenant")
            for t in changed:
                self.bump_generation(tx, tenant=t)
            self._mark_stale(tx, tenants=changed, forgotten=forgotten)
        self._scrub()
        return counts, changed

    def _untally(self, tx: Session, interaction_ids: Sequence[int], tally: Tally | None) -> None:
        if tally is None:
            return
        for i in range(0, len(interaction_ids), 500):
            rows = tx.execute(select(InteractionRow.tenant, InteractionRow.record)
                              .where(InteractionRow.id.in_(list(interaction_ids[i:i + 500])))).all()
            for tenant, record in rows:
                for h, n in tally(json.loads(record)).items():
                    row = _locked(tx, InstructionRow, (tenant, h))
                    if row is not None:
                        row.count -= n
                        if row.count <= 0:
                            tx.delete(row)

    def _forget_user(self, tx: Session, *, user: str, tenant: str | None,
                     tally: Tally | None) -> tuple[dict[str, int], set[str], set[int]]:
        scope = [InteractionRow.user == user] + ([InteractionRow.tenant == tenant] if tenant else [])
        pks = list(tx.scalars(select(InteractionRow.id).where(*scope)))
        self._untally(tx, pks, tally)
        authored = select(AuthorRow.experience_id).where(AuthorRow.user == user)
        exp_scope = [(ExperienceRow.user == user) | ExperienceRow.id.in_(authored)] + (
            [ExperienceRow.tenant == tenant] if tenant else [])
        own = list(tx.execute(select(ExperienceRow.id, ExperienceRow.tenant).where(*exp_scope)))
        changed = {t for _, t in own}
        supported = tx.execute(select(SourceRow.experience_id, func.count()).where(
            SourceRow.interaction_id.in_(pks)).group_by(SourceRow.experience_id)).all() if pks else []
        own_ids = {i for i, _ in own}
        for exp_id, n in supported:
            if exp_id not in own_ids:
                row = _locked(tx, ExperienceRow, exp_id)
                row.support = max(row.support - n, 1)
        tx.execute(delete(ConflictRow).where(ConflictRow.interaction_id.in_(pks)))
        if own_ids:
            tx.execute(delete(ExperienceRow).where(ExperienceRow.id.in_(own_ids)))
        if pks:
            tx.execute(delete(InteractionRow).where(InteractionRow.id.in_(pks)))
        return {"experiences": len(own_ids), "interactions": len(pks)}, changed, own_ids

    def _scrub(self) -> None:
        """Leave no deleted text in SQLite's write-ahead log (the main file is scrubbed by secure_delete)."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    # --- stats ------------------------------------------------------------------------------
    def counts(self, *, tenant: str | None) -> dict[str, Any]:
        """Aggregates for `stats`: interactions by status, experiences, merges, conflicts, utility, age, and
        the adapters as (tenant, version, status, active)."""
        def scoped(model: Any, stmt: Any) -> Any:
            return stmt.where(model.tenant == tenant) if tenant is not None else stmt

        with Session(self.engine) as s:
            by_status = dict(s.execute(scoped(InteractionRow, select(InteractionRow.status, func.count())
                                              .group_by(InteractionRow.status))).all())
            n_exp, support, consolidated, with_lesson = s.execute(scoped(ExperienceRow, select(
                func.count(), func.coalesce(func.sum(ExperienceRow.support), 0),
                func.count(ExperienceRow.consolidated_in), func.count(ExperienceRow.lesson)))).one()
            n_conf = s.scalar(scoped(ExperienceRow, select(func.count(ConflictRow.id)).join(
                ExperienceRow, ExperienceRow.id == ConflictRow.experience_id))) or 0
            util = s.execute(scoped(ExperienceRow, select(
                ExperienceRow.alpha, ExperienceRow.beta, ExperienceRow.last_seen_at))).all()
            adapters = s.execute(scoped(AdapterRow, select(AdapterRow.tenant, AdapterRow.version, AdapterRow.status,
                                                           AdapterRow.active))).all()
        return {"by_status": by_status, "experiences": int(n_exp), "support": int(support),
                "consolidated": int(consolidated), "lessons": int(with_lesson), "conflicts": int(n_conf),
                "utility": np.array([a / (a + b) for a, b, _ in util], dtype=np.float64),
                "last_seen": np.array([t for _, _, t in util], dtype=np.float64),
                "adapters": [(t, v, st, bool(act)) for t, v, st, act in adapters]}

    @contextmanager
    def _reader(self, tx: Session | None) -> Iterator[Session]:
        if tx is not None:
            yield tx
        else:
            with Session(self.engine) as s:
                yield s
