"""The index change log: per tenant, the experience ids each generation added to or removed from its vectors.

Written in the transaction that changes the rows (`Store.bump_generation`), so the log and the rows never
disagree. A process whose index reflects generation G and sees G' reads the changes of (G, G'] and applies
them (`changes`), instead of rebuilding the tenant's index from every vector in SQL. The log keeps the
changes after each tenant's floor; `truncate_changes` raises the floor, and a process behind it rebuilds.
Only ids are logged: forgetting an experience leaves no text or vector of it here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Boolean, Integer, String, delete, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from .engine import StoreBase
from .schema import Base, ExperienceChangeRow, ExperienceRow, ExperienceVersionRow, IndexStateRow
from .sql import locked, rowcount, upsert_dialect


class ChangeRow(Base):
    """One experience id added to (or removed from) a tenant's vectors by the transaction of `generation`."""

    __tablename__ = "index_changes"
    tenant: Mapped[str] = mapped_column(String(200), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    experience_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # no foreign key: outlives the row
    added: Mapped[bool] = mapped_column(Boolean)  # False: removed


class ChangeFloorRow(Base):
    """The log holds every change of the tenant after generation `floor`."""

    __tablename__ = "index_change_floors"
    tenant: Mapped[str] = mapped_column(String(200), primary_key=True)
    floor: Mapped[int] = mapped_column(Integer)


@dataclass(frozen=True)
class Delta:
    """What brings a tenant's index from one generation to `generation`: take out `removed`, then add `ids`."""

    generation: int
    removed: np.ndarray  # int64, (r,): ids the index held before
    ids: np.ndarray  # int64, (n,)
    xb: np.ndarray  # float32, (n, d)


class ChangeLog(StoreBase):
    """The change log's reads and writes (a part of `Store`)."""

    def log_changes(self, tx: Session, *, tenant: str, generation: int, added: Iterable[int] = (),
                    removed: Iterable[int] = ()) -> None:
        """Log what the transaction of `generation` (the tenant's row locked by its caller) did to the vectors.

        A tenant's first logged generation sets its floor just below: a memory made before the log existed
        is followed from there on (a process behind that rebuilds once)."""
        self._insert_floor(tx, tenant=tenant, floor=generation - 1)
        rows = [{"tenant": tenant, "generation": generation, "experience_id": int(i), "added": True} for i in added]
        rows += [{"tenant": tenant, "generation": generation, "experience_id": int(i), "added": False}
                 for i in removed]
        if rows:
            tx.execute(insert(ChangeRow), rows)

    def reset_changes(self, tx: Session, *, tenant: str, generation: int) -> None:
        """Drop the tenant's log up to `generation` (all its vectors went): whoever is behind rebuilds, from
        nothing."""
        tx.execute(delete(ChangeRow).where(ChangeRow.tenant == tenant, ChangeRow.generation <= generation))
        self._insert_floor(tx, tenant=tenant, floor=generation)
        locked(tx, ChangeFloorRow, tenant).floor = generation
        self.touched(tx, tenant=tenant, ids=None)

    def changes(self, *, tenant: str, after: int, d: int) -> Delta | None:
        """The delta from generation `after` to the tenant's current one, or None when the log does not cover
        it (truncated past `after`, or `after` is not one of this database's generations): rebuild then.

        An id may appear more than once (SQLite reuses the highest id once its row is deleted): the first
        change says whether the index held it at `after`, the last whether it should hold it now. An added
        id whose row is gone by now was forgotten after the current generation: its removal comes later."""
        with Session(self.engine) as s:
            generation = s.scalar(select(IndexStateRow.generation).where(IndexStateRow.tenant == tenant)) or 0
            floor = s.scalar(select(ChangeFloorRow.floor).where(ChangeFloorRow.tenant == tenant))
            if after > generation or (after < generation and (floor is None or after < floor)):
                return None
            rows = s.execute(select(ChangeRow.experience_id, ChangeRow.added).where(
                ChangeRow.tenant == tenant, ChangeRow.generation > after, ChangeRow.generation <= generation)
                .order_by(ChangeRow.generation)).all()
            first: dict[int, bool] = {}
            last: dict[int, bool] = {}
            for i, added in rows:
                first.setdefault(i, added)
                last[i] = added
            removed = np.array(sorted(i for i, added in first.items() if not added), dtype=np.int64)
            wanted = sorted(i for i, added in last.items() if added)
            found: list[tuple[int, bytes]] = []
            for k in range(0, len(wanted), 500):
                found += s.execute(select(ExperienceRow.id, ExperienceRow.vector).where(
                    ExperienceRow.tenant == tenant, ExperienceRow.id.in_(wanted[k:k + 500]))).all()
            # a truncation that committed meanwhile may have taken rows this read needed
            floor = s.scalar(select(ChangeFloorRow.floor).where(ChangeFloorRow.tenant == tenant))
            if after < generation and (floor is None or after < floor):
                return None
        found.sort()
        ids = np.fromiter((i for i, _ in found), dtype=np.int64, count=len(found))
        xb = np.frombuffer(b"".join(v for _, v in found), dtype=np.float32).reshape(len(found), d)
        return Delta(generation, removed, ids, xb)

    def snapshot(self, *, tenant: str, d: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(generation, ids (int64, (n,)), vectors (float32, (n, d))): all of a tenant's vectors and the
        generation they are at, read by one statement (so one snapshot, under PostgreSQL's read committed too)."""
        with Session(self.engine) as s:
            rows = s.execute(select(IndexStateRow.generation, ExperienceRow.id, ExperienceRow.vector)
                             .select_from(IndexStateRow)
                             .outerjoin(ExperienceRow, ExperienceRow.tenant == IndexStateRow.tenant)
                             .where(IndexStateRow.tenant == tenant).order_by(ExperienceRow.id)).all()
        generation = rows[0][0] if rows else 0  # no state row: never written, so no vectors either
        found = [(i, v) for _, i, v in rows if i is not None]
        ids = np.fromiter((i for i, _ in found), dtype=np.int64, count=len(found))
        xb = np.frombuffer(b"".join(v for _, v in found), dtype=np.float32).reshape(len(found), d)
        return generation, ids, xb

    def truncate_changes(self, *, tenant: str, keep: int) -> int:
        """Keep the tenant's last `keep` generations of changes, and its last `keep` versions of the experiences'
        change log (`ExperienceChangeRow`); returns the rows deleted."""
        with self.transaction() as tx:
            version = tx.scalar(select(ExperienceVersionRow.version).where(ExperienceVersionRow.tenant == tenant))
            deleted = rowcount(tx.execute(delete(ExperienceChangeRow).where(
                ExperienceChangeRow.tenant == tenant, ExperienceChangeRow.version <= (version or 0) - keep)))
            generation = tx.scalar(select(IndexStateRow.generation).where(IndexStateRow.tenant == tenant)) or 0
            row = locked(tx, ChangeFloorRow, tenant)
            if row is None or generation - keep <= row.floor:
                return deleted
            row.floor = generation - keep
            return deleted + rowcount(tx.execute(delete(ChangeRow).where(ChangeRow.tenant == tenant,
                                                                         ChangeRow.generation <= row.floor)))

    def _insert_floor(self, tx: Session, *, tenant: str, floor: int) -> None:
        """The tenant's floor row, inserted unless it exists (`ON CONFLICT DO NOTHING`: no unique-key error)."""
        values = {"tenant": tenant, "floor": floor}
        dialect = upsert_dialect(tx)
        if dialect is not None:
            tx.execute(dialect.insert(ChangeFloorRow).values(**values).on_conflict_do_nothing())
        elif tx.get(ChangeFloorRow, tenant) is None:
            tx.add(ChangeFloorRow(**values))
            tx.flush()
