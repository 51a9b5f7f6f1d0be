"""The adapter registry: versions, activation, rollback, consolidation marks, staleness on erasure."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import delete, event, inspect, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from ..errors import AdapterError, NotFoundError
from ..vocabulary import METHODS, SERVING_MODES
from .canaries import end_live_canary
from .engine import StoreBase
from .records import AdapterData, adapter_data
from .schema import AdapterFileRow, AdapterRow, CanaryRow, ExperienceRow, ServingModeRow
from .sql import plain, rowcount

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ServingModeData:
    """A tenant's serving-mode row: what its latest job measured, and an operator's pin."""

    tenant: str
    mode: str | None  # the measured winner (None: no job has measured yet)
    adapter: str | None  # the tenant's active adapter when it was measured
    metric: str | None  # accuracy | nll
    figures: dict[str, Any] = field(default_factory=dict)  # mode -> figure on the held-out slice
    reason: str = ""
    job_version: str | None = None  # the adapter the measuring job registered
    decided_at: float | None = None
    pinned: str | None = None  # an operator's mode (served whatever was measured)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


# Columns added to the adapters table after its first release: a database made before gets them on open.
LINEAGE_COLUMNS = {"parent": "VARCHAR(64)", "holdout": "TEXT"}


# what serves a tenant, cached while unchanged (a canary's outcome rows are not: they change with every rating)
STATE_TABLES = (AdapterRow.__tablename__, ServingModeRow.__tablename__, CanaryRow.__tablename__)


class AdapterStore(StoreBase):
    # A tenant's active adapter and serving-mode row are read for every answer and change rarely: read once, they are
    # trusted for this long. Any write to their tables through this store's engine drops them all when it commits; a
    # change made by another process is seen here within this many seconds. 0 (a store's default: exact) asks SQL on
    # every call; the service sets its `state_cache_seconds` setting here (2 s by default).
    state_cache_seconds: float = 0.0
    # Where this home writes its copies of adapters the database keeps (None: it reads adapters at their `path` only).
    adapter_home: Path | None = None

    @property
    def shared(self) -> bool:
        """Whether homes on other hosts may share this database (a server, not a SQLite file): an adapter's files are
        kept in it then."""
        return self.engine.dialect.name != "sqlite"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._add_lineage_columns()
        self._state: dict[tuple[str, str], tuple[float, Any]] = {}  # (what, tenant) -> (trusted until, value)
        event.listen(self.engine, "before_cursor_execute", _note_state_write)
        event.listen(self.engine, "commit", self._state_committed)

    def _state_committed(self, conn: Any) -> None:
        if conn.info.pop("state_written", False):
            self._state.clear()

    def _cached(self, what: str, tenant: str, read: Callable[[], T]) -> T:
        """`read()`'s value for the tenant, trusted `state_cache_seconds` once read."""
        if self.state_cache_seconds <= 0:
            return read()
        now = time.monotonic()
        found = self._state.get((what, tenant))
        if found is not None and found[0] > now:
            return cast(T, found[1])
        value = read()
        self._state[what, tenant] = (now + self.state_cache_seconds, value)
        return value

    def _add_lineage_columns(self) -> None:
        """Add the lineage columns to an adapters table created before them (`create_all` adds tables, never
        columns). Idempotent; a concurrent opener that added one first is not an error."""
        have = {c["name"] for c in inspect(self.engine).get_columns(AdapterRow.__tablename__)}
        for name, kind in LINEAGE_COLUMNS.items():
            if name in have:
                continue
            exists = " IF NOT EXISTS" if self.engine.dialect.name == "postgresql" else ""
            try:
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(f"ALTER TABLE {AdapterRow.__tablename__} ADD COLUMN{exists} {name} {kind}")
                logger.info("added column %s to the adapters table of %s", name, self.engine.url)
            except OperationalError as exc:  # SQLite: another process added it meanwhile
                if "duplicate column" not in str(exc):
                    raise

    def add_adapter(self, *, tenant: str, base_model: str, method: str, seed: int, status: str,
                    metrics: dict[str, Any], covered: Iterable[int], path: str, parent: str | None = None,
                    holdout: Iterable[int] = (), files: dict[str, bytes] | None = None) -> str:
        """Register a trained adapter (inactive); returns its version, the next "v<n>" of the store.

        `covered`: the experience ids its own job trained on; `parent`: the adapter it was trained on from
        (its lineage; None: from the base model); `holdout`: the ids its gate held out; `files`: its folder's files
        (name -> bytes), kept in the database in the same transaction, for homes that cannot read `path`.
        """
        if method not in METHODS:
            raise AdapterError(f"adapter method must be one of {', '.join(METHODS)}, got {method!r}")
        if status not in ("promoted", "rejected"):
            raise AdapterError(f"a new adapter is 'promoted' or 'rejected' by the gate, got {status!r}")
        if parent is not None:
            found = self.get_adapter(version=parent)
            if found.tenant != tenant:
                raise AdapterError(f"parent adapter {parent} belongs to tenant {found.tenant!r}, not {tenant!r}")
        fields = dict(tenant=tenant, base_model=base_model, method=method, seed=int(seed), status=status,
                      active=False, metrics=json.dumps(metrics, default=plain),
                      covered=json.dumps(sorted({int(i) for i in covered})), path=str(path), created_at=time.time(),
                      parent=parent, holdout=json.dumps(sorted({int(i) for i in holdout})))
        for attempt in range(10):  # two writers may pick the same number: the primary key sends one round again
            try:
                with self.transaction() as tx:
                    numbers = [int(m.group(1)) for v in tx.scalars(select(AdapterRow.version))
                               if (m := re.fullmatch(r"v(\d+)", v))]
                    version = f"v{max(numbers, default=0) + 1}"
                    tx.add(AdapterRow(version=version, **fields))
                    if files:
                        tx.flush()
                        tx.add_all(AdapterFileRow(version=version, name=n, data=d) for n, d in files.items())
                return version
            except IntegrityError:
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def adapters(self, *, tenant: str | None) -> list[AdapterData]:
        """The adapters of `tenant` (of every tenant if None), oldest first."""
        with Session(self.engine) as s:
            stmt = select(AdapterRow) if tenant is None else select(AdapterRow).where(AdapterRow.tenant == tenant)
            rows = [adapter_data(r) for r in s.scalars(stmt)]
        return sorted((self._here(a, write=False) for a in rows), key=lambda a: (a.created_at, len(a.version),
                                                                                   a.version))

    def get_adapter(self, *, version: str) -> AdapterData:
        with Session(self.engine) as s:
            row = s.get(AdapterRow, version)
            if row is None:
                raise NotFoundError(f"no adapter {version!r}")
            found = adapter_data(row)
        return self._here(found)

    def active_adapter(self, *, tenant: str) -> AdapterData | None:
        """The adapter the tenant's generator loads, or None for the base model (see `state_cache_seconds`)."""
        return self._cached("active", tenant, lambda: self._active_adapter(tenant))

    def _active_adapter(self, tenant: str) -> AdapterData | None:
        with Session(self.engine) as s:
            row = s.scalar(select(AdapterRow).where(AdapterRow.tenant == tenant, AdapterRow.active.is_(True)))
            found = adapter_data(row) if row is not None else None
        return self._here(found) if found is not None else None

    # --- the adapters' files, where homes on other hosts read them ---------------------------------
    def _here(self, adapter: AdapterData, *, write: bool = True) -> AdapterData:
        """`adapter` with a folder this home can read: its own `path` where that holds it; else a copy of the files
        the database keeps, written once under `adapter_home` (a home on another host than the one that trained it;
        not `write`: only a copy already there); else as it is (nothing to read: a loader says so)."""
        local = self.copy_folder(adapter.version)
        if local is None or (Path(adapter.path) / "adapter_config.json").is_file():
            return adapter
        if not (local / "adapter_config.json").is_file():
            if not write:
                return adapter
            files = self.adapter_files(version=adapter.version)
            if not files:
                return adapter
            part = local.with_name(f".{local.name}.{os.getpid()}.{threading.get_ident()}")
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir(parents=True)
            for name, data in files.items():
                (part / name).write_bytes(data)
            try:
                part.rename(local)  # whole or not at all; another thread or process may have written it first
            except OSError:
                shutil.rmtree(part, ignore_errors=True)
            logger.info("adapter %s of tenant %r written from the database to %s", adapter.version, adapter.tenant,
                        local)
        return replace(adapter, path=str(local))

    def copy_folder(self, version: str) -> Path | None:
        """Where this home keeps its copy of adapter `version`'s files from the database (None: no `adapter_home`)."""
        return self.adapter_home / f"shared-{version}" if self.adapter_home is not None else None

    def adapter_files(self, *, version: str) -> dict[str, bytes]:
        """The files of adapter `version` the database keeps (name -> bytes; none where its home keeps them)."""
        with Session(self.engine) as s:
            return {r.name: r.data for r in s.scalars(select(AdapterFileRow).where(AdapterFileRow.version == version))}

    def drop_adapter_files(self, *, tenant: str, version: str) -> str:
        """Erase the files the database keeps of the tenant's adapter `version` (its weights hold forgotten data);
        returns the folder its row names (NotFoundError: no such adapter in the tenant)."""
        with self.transaction() as tx:
            row = tx.get(AdapterRow, version)
            if row is None or row.tenant != tenant:
                raise NotFoundError(f"no adapter {version!r} in tenant {tenant!r}")
            tx.execute(delete(AdapterFileRow).where(AdapterFileRow.version == version))
            return row.path

    def activate_adapter(self, *, tenant: str, version: str, force: bool = False) -> AdapterData:
        """Make `version` the tenant's active adapter; the one it replaces becomes its `previous`. A live canary of
        another adapter ends (stopped: an operator chose).

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
            end_live_canary(tx, tenant=tenant, status="stopped", reason=f"adapter {version} was activated",
                            unless=version)
            activated = adapter_data(row)
        return self._here(activated)

    def rollback_adapter(self, *, tenant: str) -> str | None:
        """Re-activate the active adapter's `previous` (its own `previous` kept, so rollbacks walk back the
        chain); with none, deactivate all (the base model). Stale or rejected ones on the way are passed over.
        Returns the version now active, or None for the base model. A live canary ends (stopped)."""
        with self.transaction() as tx:
            self._lock_adapters(tx, tenant=tenant)
            end_live_canary(tx, tenant=tenant, status="stopped", reason="the tenant's adapter was rolled back")
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
            self.touched(tx, tenant=tenant, ids=ids)
            marked = 0
            for i in range(0, len(ids), 500):
                marked += rowcount(tx.execute(update(ExperienceRow).where(
                    ExperienceRow.tenant == tenant, ExperienceRow.id.in_(ids[i:i + 500]))
                    .values(consolidated_in=version).execution_options(synchronize_session=False)))
            return int(marked)

    # --- serving modes ----------------------------------------------------------------------------
    def serving_mode(self, *, tenant: str) -> ServingModeData | None:
        """The tenant's serving-mode row, or None when no job measured and no operator pinned (see
        `state_cache_seconds`)."""
        return self._cached("mode", tenant, lambda: self._serving_mode(tenant))

    def _serving_mode(self, tenant: str) -> ServingModeData | None:
        with Session(self.engine) as s:
            row = s.get(ServingModeRow, tenant)
            if row is None:
                return None
            return ServingModeData(row.tenant, row.mode, row.adapter, row.metric, json.loads(row.figures or "{}"),
                                   row.reason or "", row.job_version, row.decided_at, row.pinned)

    def record_serving_mode(self, *, tenant: str, mode: str, adapter: str | None, metric: str,
                            figures: dict[str, Any], reason: str, job_version: str | None = None) -> None:
        """Keep what a job measured: the winning `mode`, with `adapter` the tenant's active adapter it was measured
        with (an operator's pin stays)."""
        if mode not in SERVING_MODES:
            raise AdapterError(f"a serving mode is one of {', '.join(SERVING_MODES)}, got {mode!r}")
        with self.transaction() as tx:
            row = tx.get(ServingModeRow, tenant, with_for_update=True) or ServingModeRow(tenant=tenant)
            row.mode, row.adapter, row.metric, row.reason = mode, adapter, metric, reason
            row.figures, row.job_version = json.dumps(figures, default=plain), job_version
            row.decided_at = time.time()
            tx.merge(row)

    def pin_serving_mode(self, *, tenant: str, mode: str | None) -> None:
        """Pin the tenant's served `mode` whatever jobs measure (None: unpin, the measured mode serves again)."""
        if mode is not None and mode not in SERVING_MODES:
            raise AdapterError(f"a serving mode is one of {', '.join(SERVING_MODES)}, got {mode!r}")
        with self.transaction() as tx:
            row = tx.get(ServingModeRow, tenant, with_for_update=True) or ServingModeRow(tenant=tenant, figures="{}",
                                                                                          reason="")
            row.pinned = mode
            tx.merge(row)

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
        """Mark stale the adapters whose own job trained on a forgotten experience, and every adapter trained on
        from one of them (their weights carry it too)."""
        if not forgotten or not tenants:
            return
        now = time.time()
        rows = list(tx.scalars(select(AdapterRow).where(AdapterRow.tenant.in_(sorted(tenants)))
                               .order_by(AdapterRow.version).with_for_update()))  # the lock order of activations
        tainted = {r.version for r in rows if not forgotten.isdisjoint(json.loads(r.covered))}
        grew = True
        while grew:  # descendants of a tainted adapter, to a fixed point (parents need not precede children)
            more = {r.version for r in rows if r.parent in tainted} - tainted
            tainted |= more
            grew = bool(more)
        for row in rows:
            if row.version not in tainted:
                continue
            if row.status == "promoted":
                row.status = "stale"
            row.stale_at = row.stale_at or now
            logger.warning("adapter %s of tenant %r was trained on forgotten experiences: marked stale%s",
                           row.version, row.tenant, " (it is still active)" if row.active else "")
            end_live_canary(tx, tenant=row.tenant, status="stopped", only=row.version,  # it stops serving at once
                            reason=f"adapter {row.version} was trained on forgotten experiences")


def _note_state_write(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
    """Mark a connection that writes an adapter or serving-mode row: its commit drops the cached state."""
    if not statement.lstrip()[:6].upper() == "SELECT" and any(t in statement for t in STATE_TABLES):
        conn.info["state_written"] = True


def _figures(row: AdapterRow) -> str:
    metrics = json.loads(row.metrics)
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()) or "no figures"
