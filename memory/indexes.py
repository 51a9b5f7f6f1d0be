"""The index cache of the memory layer: one process's per-tenant indexes, which index each tenant has, the SQL
generation it reflects, its file.

SQL is the truth; an index is a disposable copy of a tenant's vectors that follows it. `TenantIndexes.get`
hands out a tenant's index as of SQL's current generation: the one in memory, or else the file under
`<home>/index`, brought forward by the changes SQL logged since its generation (the store's change log);
an index is rebuilt from all of the tenant's vectors only when it must be (no usable file, the log
truncated past it, or the kind switched). A write works on a `Pending` view (the index plus the vectors
of the open transaction, which no search may see before they commit) and hands it to `committed` once its
transaction has committed. Index files are written by `checkpoint` (every `checkpoint_changes`
generations or `checkpoint_seconds`) and by `save`; a file write also trims the change log to the last
`change_log_generations` generations.

A durable kind (`pgvector`) keeps the vectors in the database itself: the cache then holds one handle per
tenant, `stage` writes a transaction's vectors in that transaction, and there is nothing to follow or save.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .config import MemoryConfig
from .errors import ConfigError
from .index import Index, is_durable, kinds, load_index, make_index
from .index.base import check_vectors
from .index.exact import ExactIndex
from .vocabulary import tenant_key

if TYPE_CHECKING:
    from .store.changes import Delta

logger = logging.getLogger(__name__)


class IndexSource(Protocol):
    """What the cache reads from SQL (the `Store` meets it)."""

    engine: Any  # the database, for a durable kind
    def generation(self, *, tenant: str) -> int: ...

    def snapshot(self, *, tenant: str, d: int) -> tuple[int, np.ndarray, np.ndarray]: ...

    def changes(self, *, tenant: str, after: int, d: int) -> Delta | None: ...

    def truncate_changes(self, *, tenant: str, keep: int) -> int: ...


def ensure_registered(kind: str) -> str:
    """`kind`, with its backend registered first where that backend is optional: pgvector's lives with the store
    (`logmem.memory.store.vectors`), which the index registry does not know of."""
    if kind == "pgvector" and kind not in kinds():
        from .store import vectors  # noqa: F401  (registers "pgvector"; needs the optional pgvector package)
    return kind


def choose_kind(n: int, config: MemoryConfig) -> str:
    """The configured kind, or for `auto`: `flat` (exact) while small, `hnsw` past `approx_threshold`, `hnsw_sq8`
    (the same recall in about a third of the memory at 1M) past `compact_threshold`."""
    if config.index_kind != "auto":
        return config.index_kind
    if 0 < config.compact_threshold < n:
        return "hnsw_sq8"
    return "hnsw" if n > config.approx_threshold else "flat"


PGVECTOR_MIN = (0, 8)  # the iterative index scan, which a tenant filter needs to get its k rows


def pgvector_version(engine: Any) -> tuple[int, ...] | None:
    """The pgvector version the PostgreSQL server behind `engine` offers (installed or installable), or None."""
    if engine.dialect.name != "postgresql":
        return None
    from sqlalchemy import text

    with engine.connect() as conn:
        found = conn.execute(text("SELECT coalesce(installed_version, default_version) FROM pg_available_extensions "
                                  "WHERE name = 'vector'")).scalar()
    if not found:
        return None
    return tuple(int(p) for p in str(found).split(".") if p.isdigit())


def resolve_kind(config: MemoryConfig, engine: Any) -> str:
    """The kind a process uses: the configured one, except `auto` with `shared_index`, which is `pgvector` on a
    PostgreSQL server offering pgvector >= 0.8 (and stays `auto`, with a warning, anywhere else)."""
    if config.index_kind != "auto" or not config.shared_index:
        return config.index_kind
    version = pgvector_version(engine)
    if version is not None and version >= PGVECTOR_MIN:
        return "pgvector"
    where = (f"the PostgreSQL server offers pgvector {'.'.join(map(str, version))}, not >= 0.8"
             if version is not None else "the PostgreSQL server has no pgvector"
             if engine.dialect.name == "postgresql" else f"the database is {engine.dialect.name}, not PostgreSQL")
    logger.warning("shared_index: %s; each process keeps its own faiss index and follows SQL's change log", where)
    return "auto"


EF_SEARCH_FLOOR, NARROW_AT_1M, EF_SEARCH_CEILING = 128, 384, 512  # a graph built at 64, or not known
WIDE_BUILD = 128  # a graph built with at least this beam (`hnsw_ef_construction`, the default) is searched with ...
WIDE_FLOOR, WIDE_AT_1M = 96, 300  # ... a narrower beam by size, at the recall the narrow graph's beam held


def ef_search_for(n: int, config: MemoryConfig, built: int | None = None) -> int:
    """The HNSW search beam for a tenant of `n` vectors whose graph was built with the beam `built` (None: not
    known): the configured one, or by size (`hnsw_ef_search` 0), sqrt(n / 1M) times the 1M one, within a floor and
    512. On the grown ShareGPT sets (benchmarks/results/retrieval.md) a graph built at 64 (hnsw_sq8's, and files of
    earlier versions) needs 384 at 1M and 128 up to ~110k (recall@10 0.963 and 0.985); one built at `WIDE_BUILD`
    holds it with less (m 16): 96 up to ~100k (0.986 at 100k, in ~0.55 ms after an embedding where the narrow graph's
    128 took ~0.69) and ~300 at 1M (0.959 at 256, 0.972 at 384)."""
    if config.hnsw_ef_search:
        return config.hnsw_ef_search
    wide = built is not None and built >= WIDE_BUILD
    floor, at_1m = (WIDE_FLOOR, WIDE_AT_1M) if wide else (EF_SEARCH_FLOOR, NARROW_AT_1M)
    return int(min(EF_SEARCH_CEILING, max(floor, round(at_1m * (n / 1_000_000) ** 0.5))))


def index_settings(config: MemoryConfig) -> dict[str, Any]:
    """The registry's keyword settings from a config (each backend takes those it knows). A beam by size starts as
    the 1M one (384): `TenantIndexes` sets each faiss index's own by its size; pgvector keeps this one."""
    return {"m": config.hnsw_m, "sq8_m": config.hnsw_sq8_m, "ef_construction": config.hnsw_ef_construction,
            "sq8_ef_construction": config.hnsw_sq8_ef_construction, "ef_search": ef_search_for(1_000_000, config),
            "threads": config.search_threads}


def is_empty(index: Index) -> bool:
    """Whether `index` holds no vector: its length, or for a durable index one row asked for, not all counted."""
    probe = getattr(index, "empty", None)
    return bool(probe()) if callable(probe) else len(index) == 0


class Pending:
    """A tenant's index as one open transaction sees it: the committed index plus the vectors this
    transaction added. Searches merge both; the committed index is not changed until `TenantIndexes.committed`."""

    def __init__(self, tenant: str, index: Index, generation: int) -> None:
        self.tenant, self.index, self.generation = tenant, index, generation  # generation: what `index` reflects
        self.d = index.d
        self.new = ExactIndex(index.d)  # what this transaction added, searched exactly (a batch's worth)
        self._ids: list[np.ndarray] = []
        self._xb: list[np.ndarray] = []

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        self.new.add(ids, xb)
        self._ids.append(np.asarray(ids, dtype=np.int64).reshape(-1))
        self._xb.append(check_vectors(xb, self.d, "xb"))

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best `k` of the committed index and the new vectors (shapes as `Index.search`)."""
        D, I = self.index.search(xq, k)
        if len(self.new) == 0:
            return D, I
        D2, I2 = self.new.search(xq, k)
        D, I = np.hstack([D, D2]), np.hstack([I, I2])
        order = np.argsort(-D, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)

    def added(self) -> tuple[np.ndarray, np.ndarray]:
        """The ids (int64, (n,)) and vectors (float32, (n, d)) this transaction added."""
        if not self._ids:
            return np.empty(0, dtype=np.int64), np.empty((0, self.d), dtype=np.float32)
        return np.concatenate(self._ids), np.vstack(self._xb)


class TenantIndexes:
    """The per-tenant index cache of one process. Not thread-safe: `VectorMemory` calls it under its lock.

    Args:
        folder: where the index files go (one `.idx` and one `.json` per tenant).
        d: the vectors' width.
        config: the index kind, its settings, and the checkpoint policy.
        source: SQL, read for generations and vectors.
    """

    def __init__(self, folder: Path, *, d: int, config: MemoryConfig, source: IndexSource) -> None:
        self.folder, self.d, self.config, self.source = Path(folder), d, config, source
        self.folder.mkdir(parents=True, exist_ok=True)
        self._indexes: dict[str, tuple[Index, int]] = {}  # tenant -> (index, generation it reflects)
        self._saved: dict[str, tuple[int, float]] = {}  # tenant -> (generation, monotonic time) of its file
        self.rebuilds = 0  # indexes built from all of a tenant's vectors in SQL
        self.follows = 0  # deltas from the change log applied to an index
        self.kind = resolve_kind(config, source.engine)  # the configured kind, or what `auto` chose for all tenants
        self.durable = self.kind != "auto" and is_durable(ensure_registered(self.kind))
        if self.durable and source.engine.dialect.name != "postgresql":
            raise ConfigError(f"index kind {self.kind!r} needs a PostgreSQL database, "
                              f"not {source.engine.dialect.name!r}")

    # --- reading --------------------------------------------------------------------------
    def get(self, tenant: str, *, generation: int | None = None) -> Index:
        """The tenant's index as of SQL's current generation (or `generation`, just read from SQL by the caller)."""
        if self.durable:
            return self._durable(tenant)
        return self.current(tenant, generation=generation)[0]

    def held(self, tenant: str) -> Index | None:
        """The tenant's index as this process holds it, without asking SQL whether it is current."""
        cached = self._indexes.get(tenant)
        return cached[0] if cached is not None else None

    def _durable(self, tenant: str) -> Index:
        if tenant not in self._indexes:
            index = make_index(self.kind, self.d, engine=self.source.engine, tenant=tenant,
                               **index_settings(self.config))
            self._indexes[tenant] = (index, -1)  # always current: it is the database
        return self._indexes[tenant][0]

    def current(self, tenant: str, *, generation: int | None = None) -> tuple[Index, int]:
        """(index, generation) for the tenant at SQL's generation (or `generation`, just read from SQL by the
        caller): the one in memory or the tenant's file, brought forward by the logged changes; rebuilt from SQL
        when neither can be."""
        if generation is None:
            generation = self.source.generation(tenant=tenant)
        if self.durable:
            return self._durable(tenant), generation
        cached = self._indexes.get(tenant)
        if cached is not None and cached[1] == generation:
            return cached
        found = self._follow(tenant, *cached) if cached is not None and cached[1] < generation else None
        if found is None:
            loaded = self._load(tenant, generation)
            if loaded is not None:
                self._saved[tenant] = (loaded[1], time.monotonic())
                found = loaded if loaded[1] == generation else self._follow(tenant, *loaded)
        if found is None:
            found = self._rebuild(tenant)
            self._saved[tenant] = (-1, float("-inf"))  # a rebuild is worth keeping: due at the next checkpoint
        self._indexes[tenant] = found
        self._beam(found[0])
        return found

    def loaded(self) -> dict[str, Index]:
        """The indexes this process holds now, by tenant (whatever their generation)."""
        return {t: ix for t, (ix, _) in self._indexes.items()}

    def saved_generation(self, tenant: str) -> int | None:
        """The generation of the tenant's file as this process last wrote or read it (None: neither)."""
        saved = self._saved.get(tenant)
        return saved[0] if saved is not None else None

    # --- writing --------------------------------------------------------------------------
    def pending(self, tenant: str) -> Pending:
        """A view of the tenant's current index for one write transaction (see `Pending`)."""
        index, generation = self.current(tenant)
        return Pending(tenant, index, generation)

    def stage(self, tx: Any, pending: Pending) -> None:
        """Before `tx` commits: a durable index writes the transaction's vectors in it (a file-backed one takes
        them in `committed`, once they are sure)."""
        ids, xb = pending.added()
        if self.durable and len(ids):
            pending.index.add(ids, xb, tx=tx)  # type: ignore[call-arg]

    def committed(self, pending: Pending, generation: int) -> None:
        """The transaction of `pending` committed as the tenant's `generation`: its vectors go into the index
        when it directly follows the view's generation. Otherwise another process committed in between and
        the next `get` applies the log from the view's generation, this transaction's changes included."""
        cached = self._indexes.get(pending.tenant)
        if self.durable:
            return
        if cached is not None and cached[1] == pending.generation and generation == pending.generation + 1:
            ids, xb = pending.added()
            if len(ids):
                cached[0].add(ids, xb)
                self._beam(cached[0])
            self._indexes[pending.tenant] = (cached[0], generation)

    def _beam(self, index: Index) -> None:
        """An HNSW index's search beam for its size and graph (`ef_search_for`), unless one is configured."""
        if not self.config.hnsw_ef_search and hasattr(index, "ef_search"):
            built = getattr(index, "ef_construction", None)  # as its graph was built (a file keeps its own)
            index.ef_search = ef_search_for(len(index), self.config, built)  # type: ignore[attr-defined]

    def invalidate(self, tenant: str) -> None:
        """Forget the tenant's index in this process (the next `get` follows SQL)."""
        self._indexes.pop(tenant, None)

    # --- files ----------------------------------------------------------------------------
    def path(self, tenant: str) -> Path:
        """The tenant's index file (its metadata beside it, with the suffix `.json`)."""
        return self.folder / f"{tenant_key(tenant)}.idx"

    def save(self) -> None:
        """Write every loaded index whose contents changed since its file was written."""
        for tenant in list(self._indexes) if not self.durable else []:
            self.write(tenant)

    def checkpoint(self) -> None:
        """Write the loaded indexes that are due: `checkpoint_changes` writes or `checkpoint_seconds` since their
        file was written. SQL holds every change; a file only spares the next process a rebuild, so a write
        per change (a full copy of the index) would buy nothing but cost that grows with the memory."""
        now, cfg = time.monotonic(), self.config
        for tenant, (_, generation) in list(self._indexes.items()) if not self.durable else []:
            saved_generation, saved_at = self._saved.get(tenant, (generation, now))
            if generation != saved_generation and (generation - saved_generation >= cfg.checkpoint_changes
                                                   or now - saved_at >= cfg.checkpoint_seconds):
                self.write(tenant)

    def write(self, tenant: str, *, force: bool = False) -> None:
        """Write one tenant's index file (switching to HNSW where the tenant outgrew flat); skipped when the
        file already holds this generation, unless `force`."""
        index, generation = self._indexes[tenant]
        if choose_kind(len(index), self.config) != index.kind:
            index, generation = self._indexes[tenant] = self._rebuild(tenant)
        path = self.path(tenant)
        meta_path = path.with_suffix(".json")
        try:
            if not force and json.loads(meta_path.read_text()).get("generation") == generation:
                self._saved[tenant] = (generation, time.monotonic())
                return
        except (OSError, ValueError):
            pass
        tmp = path.with_suffix(".idx.tmp")
        index.save(tmp)
        os.replace(tmp, path)
        meta_tmp = path.with_suffix(".json.tmp")
        meta_tmp.write_text(json.dumps({"tenant": tenant, "generation": generation, "kind": index.kind,
                                        "d": self.d, "n": len(index)}))
        os.replace(meta_tmp, meta_path)
        self._saved[tenant] = (generation, time.monotonic())
        self.source.truncate_changes(tenant=tenant, keep=self.config.change_log_generations)

    def _load(self, tenant: str, generation: int) -> tuple[Index, int] | None:
        """(index, its generation) from the tenant's file, or None when it is missing or damaged, is of another
        kind than the configured one, or holds a generation SQL never reached (another database's file)."""
        path = self.path(tenant)
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            kind, at = meta["kind"], int(meta["generation"])
            if at <= generation and meta["d"] == self.d and self.config.index_kind in ("auto", kind):
                return load_index(path, kind, **index_settings(self.config)), at
        except (OSError, ValueError, KeyError, RuntimeError, TypeError):
            pass
        return None

    def _follow(self, tenant: str, index: Index, at: int) -> tuple[Index, int] | None:
        """`index` (at generation `at`) brought to SQL's generation by the logged changes, or None when the log
        no longer reaches back to `at`."""
        delta = self.source.changes(tenant=tenant, after=at, d=self.d)
        if delta is None:
            return None
        if len(delta.removed):
            index.remove(delta.removed)
        if len(delta.ids):
            index.add(delta.ids, delta.xb)
        self.follows += 1
        logger.debug("tenant %r: index followed from generation %d to %d (+%d, -%d)", tenant, at, delta.generation,
                     len(delta.ids), len(delta.removed))
        return index, delta.generation

    def _rebuild(self, tenant: str) -> tuple[Index, int]:
        generation, ids, xb = self.source.snapshot(tenant=tenant, d=self.d)
        index = make_index(choose_kind(len(ids), self.config), self.d, **index_settings(self.config))
        self.rebuilds += 1
        if len(ids):
            logger.info("rebuilding the %s index of tenant %r from %d stored vectors", index.kind, tenant, len(ids))
            index.add(ids, check_vectors(xb, self.d, "xb"))
        return index, generation
