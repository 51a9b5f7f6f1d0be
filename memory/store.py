"""The SQL store: the source of truth for interactions, feedback, experiences and index state.

The only module that imports SQLAlchemy. SQLite (WAL, secure_delete) by default; any SQLAlchemy URL
(PostgreSQL through psycopg) otherwise. Experience vectors are stored here too, so a lost or stale
faiss index is rebuilt from SQL without re-embedding anything.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from sqlalchemy import (Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint, create_engine,
                        delete, event, func, select, update)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .errors import NotFoundError, StoreError

SCHEMA_VERSION = "1"


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
            return int(res.rowcount)

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

    # --- forgetting -------------------------------------------------------------------------
    def forget(self, *, tenant: str | None = None, user: str | None = None,
               experience_id: int | None = None) -> tuple[dict[str, int], set[str]]:
        """Delete rows; return counts per table and the tenants whose vectors changed.

        By user: their interactions and feedback; experiences whose text came from them; their support
        is taken off experiences they only agreed with (text that never was theirs stays).
        """
        with self.transaction() as tx:
            if experience_id is not None:
                row = tx.get(ExperienceRow, experience_id)
                if row is None or (tenant is not None and row.tenant != tenant):
                    raise NotFoundError(f"no experience {experience_id}" + (f" in tenant {tenant!r}" if tenant else ""))
                # the interactions it came from hold its text too
                pks = list(tx.scalars(select(SourceRow.interaction_id).where(SourceRow.experience_id == row.id)))
                tx.delete(row)
                if pks:
                    tx.execute(delete(InteractionRow).where(InteractionRow.id.in_(pks)))
                changed = {row.tenant}
                counts = {"experiences": 1, "interactions": len(pks)}
            elif user is not None:
                counts, changed = self._forget_user(tx, user=user, tenant=tenant)
            elif tenant is not None:
                n_exp = tx.execute(delete(ExperienceRow).where(ExperienceRow.tenant == tenant)).rowcount
                n_int = tx.execute(delete(InteractionRow).where(InteractionRow.tenant == tenant)).rowcount
                tx.execute(delete(InstructionRow).where(InstructionRow.tenant == tenant))
                counts, changed = {"experiences": int(n_exp), "interactions": int(n_int)}, {tenant}
            else:
                raise ValueError("forget needs an experience id, a user or a tenant")
            for t in changed:
                self.bump_generation(tx, tenant=t)
        self._scrub()
        return counts, changed

    def _forget_user(self, tx: Session, *, user: str, tenant: str | None) -> tuple[dict[str, int], set[str]]:
        scope = [InteractionRow.user == user] + ([InteractionRow.tenant == tenant] if tenant else [])
        pks = list(tx.scalars(select(InteractionRow.id).where(*scope)))
        exp_scope = [ExperienceRow.user == user] + ([ExperienceRow.tenant == tenant] if tenant else [])
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
        return {"experiences": len(own_ids), "interactions": len(pks)}, changed

    def _scrub(self) -> None:
        """Leave no deleted text in SQLite's write-ahead log (the main file is scrubbed by secure_delete)."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    # --- stats ------------------------------------------------------------------------------
    def counts(self, *, tenant: str | None) -> dict[str, Any]:
        """Aggregates for `stats`: interactions by status, experiences, merges, conflicts, utility, age."""
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
        return {"by_status": by_status, "experiences": int(n_exp), "support": int(support),
                "consolidated": int(consolidated), "lessons": int(with_lesson), "conflicts": int(n_conf),
                "utility": np.array([a / (a + b) for a, b, _ in util], dtype=np.float64),
                "last_seen": np.array([t for _, _, t in util], dtype=np.float64)}

    @contextmanager
    def _reader(self, tx: Session | None) -> Iterator[Session]:
        if tx is not None:
            yield tx
        else:
            with Session(self.engine) as s:
                yield s
