"""pgvector as an index backend: the vectors live in PostgreSQL, beside the rows they belong to.

Kind `pgvector` in the index registry. One table, `experience_vectors` (experience id, tenant, a pgvector
`vector(d)`), with an HNSW index over inner product (`vector_ip_ops`: the vectors are unit length). A search
filters by tenant and lets pgvector's iterative index scan (>= 0.8, `hnsw.iterative_scan`) go on until the
tenant has its k rows, so a small tenant in a large table still gets k results and never another's rows.
`hnsw.ef_search` comes from the settings, set for each search's transaction only. A write inside a memory's
transaction (`add(..., tx=tx)`) commits with the rows, or not at all; forgetting deletes the vectors in the
same transaction as the rows (`Store.forget`). No index file: `save` writes only which tenant and width.

Tenants share the table, apart by the filter, not by LIST partitions per tenant: measured on the same rows
(`benchmarks/bench_pgvector_tenants.py`, results/pgvector_tenants.md), recall was the same for large, small and
tiny tenants (PostgreSQL answers a small tenant exactly from the tenant B-tree); only a 10% tenant at
`hnsw.ef_search` 40 lost recall through the shared graph (0.879 against 0.985 from its own partition; 1.000 for
both at 128), while partitions cost DDL and a lock on the parent table for every new tenant and one HNSW index each.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from pgvector.sqlalchemy import Vector
from sqlalchemy import BigInteger, Column, Engine, MetaData, String, Table, delete, func, insert, select, text
from sqlalchemy import Index as SQLIndex
from sqlalchemy.orm import Session

from ..errors import ConfigError, DimensionMismatchError
from ..index import Backend, register
from ..index.base import check_ids, check_vectors, empty_result
from .experiences import VECTOR_TABLE as TABLE

ITERATIVE_SCAN = "strict_order"  # results in exact distance order (the contract: best first)


def vector_table(d: int, *, m: int = 16, ef_construction: int = 64) -> Table:
    """The vectors table for width `d`, with its HNSW index (on a MetaData of its own: SQLite never gets it)."""
    table = Table(TABLE, MetaData(),
                  Column("experience_id", BigInteger, primary_key=True, autoincrement=False),
                  Column("tenant", String(200), nullable=False, index=True),
                  Column("embedding", Vector(d), nullable=False))
    SQLIndex(f"{TABLE}_hnsw", table.c.embedding, postgresql_using="hnsw",
             postgresql_with={"m": m, "ef_construction": ef_construction},
             postgresql_ops={"embedding": "vector_ip_ops"})
    return table


def ensure_vector_table(engine: Engine, d: int, *, m: int = 16, ef_construction: int = 64) -> Table:
    """Create the extension, the table and its HNSW index unless they exist (two processes at once wait for
    each other on an advisory lock); raise when the table exists for another width."""
    if engine.dialect.name != "postgresql":
        raise ConfigError(f"index kind 'pgvector' needs a PostgreSQL database, not {engine.dialect.name!r}")
    table = vector_table(d, m=m, ef_construction=ef_construction)
    with engine.begin() as conn:
        conn.execute(select(func.pg_advisory_xact_lock(zlib.crc32(TABLE.encode()))))
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        table.metadata.create_all(conn)
        have = conn.execute(text("SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(:t) "
                                 "AND attname = 'embedding'"), {"t": TABLE}).scalar_one()
    if have != d:
        raise DimensionMismatchError(f"table {TABLE} holds vectors of width {have}, not {d}")
    return table


class PgVectorIndex:
    """One tenant's vectors in PostgreSQL with pgvector (see the module docstring).

    Args:
        d: the vectors' width.
        engine: the database (PostgreSQL with the `vector` extension available).
        tenant: whose rows this index adds, searches and removes.
        m, ef_construction: the HNSW index's build settings (used when the table is created).
        ef_search: `hnsw.ef_search` for every search.
    """

    kind = "pgvector"

    def __init__(self, d: int, *, engine: Engine, tenant: str = "default", m: int = 16, ef_construction: int = 64,
                 ef_search: int = 128) -> None:
        self.d, self.engine, self.tenant, self.ef_search = d, engine, tenant, ef_search
        self.table = ensure_vector_table(engine, d, m=m, ef_construction=ef_construction)

    def add(self, ids: np.ndarray, xb: np.ndarray, *, tx: Session | None = None) -> None:
        """Insert vectors, in `tx` when given (they commit with it), else in a transaction of their own."""
        xb = check_vectors(xb, self.d, "xb")
        ids = check_ids(ids, xb.shape[0])
        rows = [{"experience_id": int(i), "tenant": self.tenant, "embedding": x} for i, x in zip(ids, xb)]
        if not rows:
            return
        if tx is not None:
            tx.execute(insert(self.table), rows)
        else:
            with self.engine.begin() as conn:
                conn.execute(insert(self.table), rows)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq = check_vectors(xq, self.d, "xq")
        D, I = empty_result(xq.shape[0], k)
        if k <= 0:
            return D, I
        score = self.table.c.embedding.max_inner_product  # pgvector's <#>: the negative inner product
        with self.engine.begin() as conn:
            conn.execute(select(func.set_config("hnsw.ef_search", str(self.ef_search), True),
                                func.set_config("hnsw.iterative_scan", ITERATIVE_SCAN, True)))
            for q, x in enumerate(xq):
                rows = conn.execute(select(self.table.c.experience_id, score(x)).where(
                    self.table.c.tenant == self.tenant).order_by(score(x)).limit(k)).all()
                for j, (i, negative) in enumerate(rows):
                    D[q, j], I[q, j] = -negative, i
        return D, I

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        wanted = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        with self.engine.connect() as conn:
            found = dict(conn.execute(select(self.table.c.experience_id, self.table.c.embedding).where(
                self.table.c.tenant == self.tenant, self.table.c.experience_id.in_(wanted))).all())
        missing = [i for i in wanted if i not in found]
        if missing:
            raise KeyError(f"the index holds no vector of id {missing[0]}")
        return np.array([found[i] for i in wanted], dtype=np.float32).reshape(len(wanted), self.d)

    def remove(self, ids: np.ndarray) -> int:
        wanted = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        removed = 0
        with self.engine.begin() as conn:
            for k in range(0, len(wanted), 1000):
                result = conn.execute(delete(self.table).where(self.table.c.tenant == self.tenant,
                                                               self.table.c.experience_id.in_(wanted[k:k + 1000])))
                removed += int(getattr(result, "rowcount", 0) or 0)
        return removed

    def __len__(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.table)
                                    .where(self.table.c.tenant == self.tenant)).scalar_one())

    def empty(self) -> bool:
        """Whether the tenant has no vector (one row looked for: cheaper than `len` on a large table)."""
        with self.engine.connect() as conn:
            return conn.execute(select(self.table.c.experience_id).where(self.table.c.tenant == self.tenant)
                                .limit(1)).first() is None

    def nbytes(self) -> int:
        """The stored size of the tenant's vectors (the table's HNSW graph is shared by all tenants)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.sum(func.pg_column_size(self.table.c.embedding)), 0))
                                    .where(self.table.c.tenant == self.tenant)).scalar_one())

    def save(self, path: Path) -> None:
        """The vectors are in PostgreSQL already: write only which tenant and width this index is."""
        Path(path).write_text(json.dumps({"kind": self.kind, "tenant": self.tenant, "d": self.d}))

    @classmethod
    def load(cls, path: Path, *, engine: Engine | None = None, **settings: Any) -> PgVectorIndex:
        meta = json.loads(Path(path).read_text())
        if meta.get("kind") != cls.kind:
            raise ValueError(f"{path} is not a pgvector index file")
        return cls(int(meta["d"]), engine=_needs_engine(engine), tenant=meta["tenant"], **_build(settings))


def _needs_engine(engine: Engine | None) -> Engine:
    if engine is None:
        raise ConfigError("index kind 'pgvector' needs engine= (a PostgreSQL database)")
    return engine


def _build(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in ("m", "ef_construction", "ef_search") if k in settings}


def _make(d: int, *, engine: Engine | None = None, tenant: str = "default", **settings: Any) -> PgVectorIndex:
    return PgVectorIndex(d, engine=_needs_engine(engine), tenant=tenant, **_build(settings))


register("pgvector", Backend(make=_make, load=PgVectorIndex.load, durable=True))
