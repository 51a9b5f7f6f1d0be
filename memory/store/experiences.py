"""The SQL store: the source of truth for interactions, feedback, experiences and index state.

This package is the only one that imports SQLAlchemy: `schema` (the tables), `records` (what reads
return), `engine` (engine, transactions), `sql` (helpers its parts share), `adapters`, `jobs`, `keys`,
`served` and `changes` (their rows), `transfer` (a tenant read and written whole, for export and import), and
here the memory's own rows (interactions, experiences, their generations) and forgetting, and `Store`, which
composes every part. SQLite (WAL, secure_delete) by default;
any SQLAlchemy URL (PostgreSQL through psycopg) otherwise. Experience vectors are stored here too, so a lost or stale
faiss index is rebuilt from SQL without re-embedding anything.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Column, MetaData, String, Table, delete, func, insert, select, update
from sqlalchemy.orm import Session

from ..errors import NotFoundError, StoreError
from .adapters import AdapterStore
from .canaries import CanaryStore
from .changes import ChangeLog
from .jobs import JobStore
from .keys import KeyStore
from .records import ExperienceData, ScoringColumns, experience_data
from .schema import (
    EVERY_EXPERIENCE,
    SCHEMA_VERSION,
    AdapterRow,
    AuthorRow,
    CanaryRow,
    ConflictRow,
    ExperienceRow,
    FeedbackRow,
    IndexStateRow,
    InstructionRow,
    InteractionRow,
    MetaRow,
    RetrievalRow,
    ServingModeRow,
    SourceRow,
)
from .served import AnswerStore
from .sql import created_locked, locked, rowcount
from .transfer import TransferStore

logger = logging.getLogger(__name__)
Tally = Callable[[dict[str, Any]], dict[str, int]]  # an interaction record -> the leading paragraphs it counted
Tx = Session  # an open transaction, as `Store.transaction()` yields it (other modules name it without SQLAlchemy)
VECTOR_TABLE = "experience_vectors"  # pgvector's table (`store.vectors`), where a memory of that kind made it

ROW_COLUMNS = tuple(f.name for f in dataclasses.fields(ExperienceData))  # an experience's columns, in its order


def _experience(row: tuple[Any, ...]) -> ExperienceData:
    """An experience from the driver's row of ROW_COLUMNS."""
    (id_, tenant, user, instruction, trigger, response, lesson, rejected, vector, alpha, beta, support, uses,
     created_at, last_seen_at, consolidated_in) = row
    return ExperienceData(id_, tenant, user, instruction, trigger, response, lesson, rejected,
                          np.frombuffer(vector, dtype=np.float32), alpha, beta, support, uses, created_at,
                          last_seen_at, consolidated_in)


class Store(AdapterStore, CanaryStore, JobStore, KeyStore, AnswerStore, ChangeLog, TransferStore):
    """Repository over the SQL database. Write methods take the open transaction `tx` first."""

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
    def known_interactions(self, tx: Session | None, *, tenant: str, ext_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self._reader(tx) as s:
            for i in range(0, len(ext_ids), 500):
                chunk = list(ext_ids[i:i + 500])
                found.update(s.scalars(select(InteractionRow.ext_id).where(
                    InteractionRow.tenant == tenant, InteractionRow.ext_id.in_(chunk))))
        return found

    def stored_hashes(self, tx: Session | None = None, *, tenant: str, hashes: Sequence[str]) -> set[str]:
        """Which of `hashes` the tenant's experiences have (each experience's `content_hash`)."""
        found: set[str] = set()
        with self._reader(tx) as s:
            for i in range(0, len(hashes), 500):
                found.update(s.scalars(select(ExperienceRow.content_hash).where(
                    ExperienceRow.tenant == tenant, ExperienceRow.content_hash.in_(list(hashes[i:i + 500])))))
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

    def add_experiences(self, tx: Session, *, tenant: str, rows: Sequence[dict[str, Any]], source: int) -> list[int]:
        """Experiences written as they are, many in one statement (a bulk import), each sourced to interaction
        `source`; `rows` hold the experiences table's columns but `tenant`. Returns their ids, in order."""
        if not rows:
            return []
        ids = list(tx.scalars(insert(ExperienceRow).returning(ExperienceRow.id, sort_by_parameter_order=True),
                              [{**r, "tenant": tenant} for r in rows]))
        tx.execute(insert(SourceRow), [{"experience_id": i, "interaction_id": source} for i in ids])
        return ids

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
        self.set_statuses(tx, {interaction_id: status})

    def set_statuses(self, tx: Session, statuses: dict[int, str]) -> None:
        """Interactions' statuses by primary key, in one statement (not each row loaded again: the rows
        `add_interaction` made are gone from the session by then)."""
        if statuses:
            tx.execute(update(InteractionRow), [{"id": i, "status": s} for i, s in statuses.items()])

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
        created it, so forgetting a user who merely agreed leaves none of their words behind. An interaction
        that already supports the experience (a served answer judged again) counts once: nothing changes.
        """
        row = locked(tx, ExperienceRow, experience_id)
        if row is None:
            raise NotFoundError(f"no experience {experience_id}")
        if tx.get(SourceRow, (experience_id, interaction_id)) is not None:
            return
        self.touched(tx, tenant=row.tenant, ids=[experience_id])
        row.support += 1
        row.alpha += success
        row.beta += 1.0 - success
        row.created_at = min(row.created_at, timestamp)
        row.last_seen_at = max(row.last_seen_at, timestamp)
        tx.add(SourceRow(experience_id=experience_id, interaction_id=interaction_id))

    def add_conflict(self, tx: Session, *, experience_id: int, interaction_id: int, response: str,
                     swap_hash: str, wins_ties: bool = False, lesson: str | None = None,
                     rejected: str | None = None) -> bool:
        """Record a conflicting answer. When its support outgrows the experience's, it takes its place
        (and the old answer becomes the conflict). Returns whether the answer was swapped.

        `swap_hash` is the content hash of the experience's trigger with `response`: the experience takes
        it on a swap, so that a later exact copy of the old answer counts as a conflict, not as support.
        `wins_ties`: the answer corrects the experience's own answer, evidence against it, so equal support
        is enough to take its place, and on a swap the experience takes its `lesson` and `rejected` answer."""
        row = locked(tx, ExperienceRow, experience_id)  # first: concurrent conflicts on it count in turn
        if row is None:
            raise NotFoundError(f"no experience {experience_id}")
        if tx.scalar(select(ConflictRow.id).where(ConflictRow.experience_id == experience_id,  # judged again
                                                  ConflictRow.interaction_id == interaction_id,
                                                  ConflictRow.response == response)) is not None:
            return False
        tx.add(ConflictRow(experience_id=experience_id, interaction_id=interaction_id, response=response))
        tx.flush()
        same = tx.scalar(select(func.count()).select_from(ConflictRow).where(
            ConflictRow.experience_id == experience_id, ConflictRow.response == response)) or 0
        if same < row.support or (same == row.support and not wins_ties):
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
        self.touched(tx, tenant=row.tenant, ids=[experience_id])
        row.response, row.support = response, same
        if lesson is not None or rejected is not None:
            row.lesson, row.rejected = lesson, rejected
        if self.experience_by_hash(tx, tenant=row.tenant, content_hash=swap_hash) is None:  # keep it unique
            row.content_hash = swap_hash
        return True

    def get_experiences(self, tx: Session | None = None, *, tenant: str, ids: Iterable[int],
                        vectors: bool = True) -> dict[int, ExperienceData]:
        """The tenant's experiences among `ids`, by id (an unknown id, or another tenant's, is left out). Outside
        a transaction (a search reads its picks this way) one statement in the driver's own SQL, written once per
        count of ids: no ORM objects, nothing compiled; without `vectors`, each one's vector is left empty (a
        search's rows: the index holds the vectors)."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        if tx is None:
            return self._experiences(self.driver_rows(self._by_ids_sql(vectors, len(ids)), (tenant, *ids)), vectors)
        rows = tx.scalars(select(ExperienceRow).where(ExperienceRow.tenant == tenant, ExperienceRow.id.in_(ids)))
        return {r.id: experience_data(r) for r in rows}

    def _by_ids_sql(self, vectors: bool, n: int) -> str:
        """The read of `n` rows by id. SQLite's `+tenant` keeps the tenant's index out of the plan: one descent by
        rowid per id, the tenant checked on the row (with the index, SQLite walked it too for every id)."""
        tenant = "+tenant" if self.engine.dialect.name == "sqlite" else "tenant"
        return self.driver_sql(f"{self._heads[vectors]} WHERE {tenant} = ? AND id IN ({', '.join('?' * n)})")

    @functools.cached_property
    def _heads(self) -> dict[bool, str]:
        """The SELECT of ROW_COLUMNS (with or without the vector) from experiences, before its WHERE."""
        return {v: f"SELECT {', '.join(self.quote(c) for c in ROW_COLUMNS if v or c != 'vector')} FROM experiences"
                for v in (True, False)}

    @staticmethod
    def _experiences(rows: list[tuple[Any, ...]], vectors: bool) -> dict[int, ExperienceData]:
        at = ROW_COLUMNS.index("vector")
        return {r[0]: _experience(r if vectors else (*r[:at], b"", *r[at:])) for r in rows}

    def iter_experiences(self, *, tenant: str, batch: int = 10_000) -> Iterator[ExperienceData]:
        with Session(self.engine) as s:
            last = 0
            while True:
                rows = list(s.scalars(select(ExperienceRow).where(ExperienceRow.tenant == tenant,
                                                                  ExperienceRow.id > last)
                                      .order_by(ExperienceRow.id).limit(batch)))
                if not rows:
                    return
                yield from (experience_data(r) for r in rows)
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

    def record_outcome(self, tx: Session | None = None, *, tenant: str, ids: Sequence[int], success: float,
                       weight: float = 1.0) -> int:
        """Credit an outcome to experiences: utility Beta(alpha, beta) gains weight * (success, 1 - success)."""
        ids = [int(i) for i in ids]
        stmt = (update(ExperienceRow)
                .where(ExperienceRow.tenant == tenant, ExperienceRow.id.in_(ids))
                .values(alpha=ExperienceRow.alpha + weight * success,
                        beta=ExperienceRow.beta + weight * (1.0 - success))
                .execution_options(synchronize_session=False))
        if tx is not None:
            self.touched(tx, tenant=tenant, ids=ids)
            return rowcount(tx.execute(stmt))
        with self.transaction() as own:
            self.touched(own, tenant=tenant, ids=ids)
            return rowcount(own.execute(stmt))

    def experiences_after(self, *, tenant: str, after_id: int) -> tuple[int, int]:
        """(how many, the newest id) of the tenant's experiences with an id above `after_id` (the newest id is
        `after_id` when there are none)."""
        with Session(self.engine) as s:
            n, newest = s.execute(select(func.count(), func.max(ExperienceRow.id)).where(
                ExperienceRow.tenant == tenant, ExperienceRow.id > after_id)).one()
        return int(n), int(newest) if newest is not None else after_id

    def experience_counts(self) -> dict[str, int]:
        """Experiences per tenant."""
        with Session(self.engine) as s:
            return {t: int(n) for t, n in s.execute(select(ExperienceRow.tenant, func.count())
                                                   .group_by(ExperienceRow.tenant)).all()}

    # --- shared instructions ----------------------------------------------------------------
    def count_instructions(self, tx: Session, *, tenant: str, counts: dict[str, tuple[str, int]]) -> None:
        """Add `counts` (hash -> (text, n)) to the tenant's tally of leading paragraphs."""
        for h, (text, n) in counts.items():
            row = created_locked(tx, InstructionRow, {"tenant": tenant, "content_hash": h, "text": text, "count": 0})
            row.count += n
        tx.flush()

    def instruction_counts(self, *, tenant: str, hashes: Sequence[str]) -> dict[str, int]:
        """The tenant's tally of the leading paragraphs `hashes` (those never counted are left out)."""
        counts: dict[str, int] = {}
        with Session(self.engine) as s:
            for i in range(0, len(hashes), 500):
                rows = s.execute(select(InstructionRow.content_hash, InstructionRow.count).where(
                    InstructionRow.tenant == tenant, InstructionRow.content_hash.in_(list(hashes[i:i + 500]))))
                counts.update((h, int(n)) for h, n in rows)
        return counts

    def instructions(self, *, tenant: str, min_count: int, tx: Session | None = None) -> set[str]:
        with self._reader(tx) as s:
            return set(s.scalars(select(InstructionRow.text).where(InstructionRow.tenant == tenant,
                                                                   InstructionRow.count >= min_count)))

    # --- index state ------------------------------------------------------------------------
    def bump_generation(self, tx: Session, *, tenant: str, added: Iterable[int] = (),
                        removed: Iterable[int] = ()) -> int:
        """Count one more change to the tenant's vectors and log which experience ids it `added` and `removed`
        (in `tx`, so the log commits with the rows or not at all); returns the new generation. The tenant's
        row stays locked until commit: generations commit in order."""
        row = created_locked(tx, IndexStateRow, {"tenant": tenant, "generation": 0})
        row.generation += 1
        tx.flush()
        removed = list(removed)
        self.log_changes(tx, tenant=tenant, generation=row.generation, added=added, removed=removed)
        self.touched(tx, tenant=tenant, ids=removed)  # rows held of them go too (added ids were never held)
        return row.generation

    def generation(self, *, tenant: str) -> int:
        rows = self.driver_rows(self._generation_sql, (tenant,))  # nothing compiled
        return int(rows[0][0]) if rows else 0

    @functools.cached_property
    def _generation_sql(self) -> str:
        return self.driver_sql("SELECT generation FROM index_state WHERE tenant = ?")

    def search_state(self, *, tenant: str) -> tuple[int, int]:
        """(generation, version) of the tenant, read by one statement: every search asks. The generation moves with
        its vectors, the version with the rest of what a search reads of its experiences (`touched`)."""
        rows = self.driver_rows(self._state_sql, (tenant, tenant), held=True)
        generation, version = rows[0] if rows else (None, None)
        return int(generation or 0), int(version or 0)

    @functools.cached_property
    def _state_sql(self) -> str:
        return self.driver_sql("SELECT (SELECT generation FROM index_state WHERE tenant = ?), "
                               "(SELECT version FROM experience_versions WHERE tenant = ?)")

    def experience_changes(self, *, tenant: str, after: int) -> set[int] | None:
        """The ids of the tenant's experiences changed by its versions after `after` (and any that committed since
        the caller read its stamp), or None when every experience may have: the log no longer reaches back to
        `after` (truncated, or older than the log), or a version changed them all."""
        rows = self.driver_rows(self._changes_sql, (tenant, after))
        if not rows or min(v for v, _ in rows) != after + 1:
            return None
        ids = {int(i) for _, i in rows}
        return None if EVERY_EXPERIENCE in ids else ids

    @functools.cached_property
    def _changes_sql(self) -> str:
        return self.driver_sql("SELECT version, experience_id FROM experience_changes WHERE tenant = ? AND version > ?")

    def all_experiences(self, *, tenant: str, vectors: bool = True) -> dict[int, ExperienceData]:
        """Every experience of the tenant, by id, in one statement (a search holding a small tenant whole; without
        `vectors`, as `get_experiences`)."""
        sql = self.driver_sql(self._heads[vectors] + " WHERE tenant = ?")
        return self._experiences(self.driver_rows(sql, (tenant,)), vectors)

    def scoring_columns(self, *, tenant: str) -> ScoringColumns:
        """What a search scores the tenant's experiences by, in id order, in one statement: no text, no vector."""
        return ScoringColumns.from_tuples(self.driver_rows(self._columns_sql, (tenant,)))

    @functools.cached_property
    def _columns_sql(self) -> str:
        columns = ", ".join(self.quote(c) for c in ("id", "alpha", "beta", "last_seen_at", "consolidated_in"))
        return self.driver_sql(f"SELECT {columns} FROM experiences WHERE tenant = ?")

    def tenants(self) -> list[str]:
        with Session(self.engine) as s:
            names = set(s.scalars(select(InteractionRow.tenant).distinct()))
            names |= set(s.scalars(select(ExperienceRow.tenant).distinct()))
            return sorted(names)

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
                by_tenant = {row.tenant: {row.id}}
                counts = {"experiences": 1, "interactions": len(pks)}
            elif user is not None:
                counts, by_tenant = self._forget_user(tx, user=user, tenant=tenant, tally=tally)
            elif tenant is not None:
                gone = set(tx.scalars(delete(ExperienceRow).where(ExperienceRow.tenant == tenant)
                                      .returning(ExperienceRow.id)))
                n_int = rowcount(tx.execute(delete(InteractionRow).where(InteractionRow.tenant == tenant)))
                tx.execute(delete(InstructionRow).where(InstructionRow.tenant == tenant))
                tx.execute(delete(ServingModeRow).where(ServingModeRow.tenant == tenant))  # its figures, its pin
                tx.execute(delete(CanaryRow).where(CanaryRow.tenant == tenant))  # its canaries and their outcomes
                counts, by_tenant = {"experiences": len(gone), "interactions": int(n_int)}, {tenant: gone}
            else:
                raise ValueError("forget needs an experience id, a user or a tenant")
            # a whole tenant: its change log starts afresh instead of taking one row per forgotten id (a process
            # behind rebuilds, from nothing)
            whole = experience_id is None and user is None
            for t, ids in by_tenant.items():
                generation = self.bump_generation(tx, tenant=t, removed=() if whole else sorted(ids))
                if whole:
                    self.reset_changes(tx, tenant=t, generation=generation)
            changed = set(by_tenant)
            forgotten = set().union(*by_tenant.values())
            _delete_vectors(tx, ids=[] if whole else sorted(forgotten), tenant=tenant if whole else None)
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
                    row = locked(tx, InstructionRow, (tenant, h))
                    if row is not None:
                        row.count -= n
                        if row.count <= 0:
                            tx.delete(row)

    def _forget_user(self, tx: Session, *, user: str, tenant: str | None,
                     tally: Tally | None) -> tuple[dict[str, int], dict[str, set[int]]]:
        scope = [InteractionRow.user == user] + ([InteractionRow.tenant == tenant] if tenant else [])
        pks = list(tx.scalars(select(InteractionRow.id).where(*scope)))
        self._untally(tx, pks, tally)
        authored = select(AuthorRow.experience_id).where(AuthorRow.user == user)
        exp_scope = [(ExperienceRow.user == user) | ExperienceRow.id.in_(authored)] + (
            [ExperienceRow.tenant == tenant] if tenant else [])
        own = list(tx.execute(select(ExperienceRow.id, ExperienceRow.tenant).where(*exp_scope)))
        by_tenant: dict[str, set[int]] = {}
        for i, t in own:
            by_tenant.setdefault(t, set()).add(i)
        supported = tx.execute(select(SourceRow.experience_id, func.count()).where(
            SourceRow.interaction_id.in_(pks)).group_by(SourceRow.experience_id)).all() if pks else []
        own_ids = {i for i, _ in own}
        for exp_id, n in supported:
            if exp_id not in own_ids:
                row = locked(tx, ExperienceRow, exp_id)
                row.support = max(row.support - n, 1)
                self.touched(tx, tenant=row.tenant, ids=[exp_id])
        tx.execute(delete(ConflictRow).where(ConflictRow.interaction_id.in_(pks)))
        if own_ids:
            tx.execute(delete(ExperienceRow).where(ExperienceRow.id.in_(own_ids)))
        if pks:
            tx.execute(delete(InteractionRow).where(InteractionRow.id.in_(pks)))
        return {"experiences": len(own_ids), "interactions": len(pks)}, by_tenant

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


def _delete_vectors(tx: Session, *, ids: list[int], tenant: str | None) -> None:
    """Delete the forgotten experiences' vectors from pgvector's table (all of `tenant`'s, when given), in the
    forgetting transaction, wherever the table exists: whichever index kind this process uses, another
    process on the same database may keep the vectors there."""
    if tx.get_bind().dialect.name != "postgresql" or tx.scalar(select(func.to_regclass(VECTOR_TABLE))) is None:
        return
    table = Table(VECTOR_TABLE, MetaData(), Column("experience_id", BigInteger), Column("tenant", String(200)))
    if tenant is not None:
        tx.execute(delete(table).where(table.c.tenant == tenant))
    for k in range(0, len(ids), 1000):
        tx.execute(delete(table).where(table.c.experience_id.in_(ids[k:k + 1000])))
