"""pgvector as the index: vectors in PostgreSQL in the rows' transaction, shared by every process without
following, tenants apart, forgetting removing them (a real PostgreSQL 18 with pgvector 0.8.5)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from liked import QA, rec
from logmem.memory import ConfigError, Embedder, MemoryConfig, VectorMemory
from logmem.memory.index import make_index
from logmem.memory.store import vectors as _pgvector  # noqa: F401  (registers the pgvector kind)
from sqlalchemy import Engine, create_engine, func, select, text

pytestmark = pytest.mark.postgres

PGVECTOR = MemoryConfig(index_kind="pgvector")


@pytest.fixture
def sql(pgvector_db: str) -> Iterator[Engine]:
    engine = create_engine(pgvector_db)
    yield engine
    engine.dispose()


def ids(sql: Engine, query: str) -> list[int]:
    with sql.connect() as conn:
        return sorted(int(i) for i in conn.execute(text(query)).scalars())


def vectors_match_rows(sql: Engine) -> bool:
    return ids(sql, "SELECT experience_id FROM experience_vectors") == ids(sql, "SELECT id FROM experiences")


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_small_tenant_gets_its_k_results_from_the_hnsw_index(pgvector_db: str) -> None:
    """A big tenant near the query, a small one far from it, and only the HNSW index to answer (no seq scan,
    no tenant index: for a small tenant the planner would rather read its rows by tenant and sort them, which
    is exact): the small tenant gets all its k rows (the iterative scan), which a plain HNSW scan would not
    give it."""
    engine = create_engine(pgvector_db, connect_args={"options": "-c enable_seqscan=off"})
    try:
        rng, d = np.random.default_rng(0), 32
        xq = unit_rows(rng, 1, d)[0]
        near = xq + 0.3 * unit_rows(rng, 3000, d)
        big = make_index("pgvector", d, engine=engine, tenant="big", ef_search=40)
        big.add(np.arange(3000), near / np.linalg.norm(near, axis=1, keepdims=True))
        small = make_index("pgvector", d, engine=engine, tenant="small", ef_search=40)
        far = unit_rows(rng, 10, d) - xq
        small.add(np.arange(5000, 5010), far / np.linalg.norm(far, axis=1, keepdims=True))
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_experience_vectors_tenant"))

        D, I = small.search(xq, 10)

        assert sorted(I[0].tolist()) == list(range(5000, 5010)) and np.isfinite(D).all()
        table = small.table  # type: ignore[attr-defined]
        plain = select(table.c.experience_id).where(table.c.tenant == "small").order_by(
            table.c.embedding.max_inner_product(xq)).limit(10)
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL hnsw.ef_search = 40"))
            literal = str(plain.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = "\n".join(conn.exec_driver_sql("EXPLAIN " + literal).scalars())
            found = conn.execute(plain).scalars().all()
        assert "experience_vectors_hnsw" in plan
        assert len(found) < 10  # without the iterative scan the index's 40 candidates are all the big tenant's
    finally:
        engine.dispose()


def test_a_memory_keeps_its_vectors_in_postgresql(tmp_path: Path, embedder: Embedder, pgvector_db: str,
                                                  sql: Engine) -> None:
    with VectorMemory(tmp_path / "home", embedder=embedder, db_url=pgvector_db, config=PGVECTOR) as vm:
        vm.ingest([rec(0), rec(1), rec(2, tenant="globex")])

        assert vm.search(QA[0][0], 1, tenant="acme")[0].response == QA[0][1]
        assert QA[2][1] not in [h.response for h in vm.search(QA[2][0], 3, tenant="acme")]
        assert vm.search(QA[2][0], 1, tenant="globex")[0].response == QA[2][1]
        assert vm.stats("acme").index["acme"]["kind"] == "pgvector" and vm.stats("acme").index["acme"]["size"] == 2
        assert vectors_match_rows(sql)
        vm.close()
        assert not list((tmp_path / "home" / "index").glob("*.idx"))  # no index file: the database is the index


def test_two_memories_share_the_vectors_without_following(tmp_path: Path, embedder: Embedder, pgvector_db: str,
                                                          sql: Engine) -> None:
    with VectorMemory(tmp_path / "one", embedder=embedder, db_url=pgvector_db, config=PGVECTOR) as one, \
            VectorMemory(tmp_path / "two", embedder=embedder, db_url=pgvector_db, config=PGVECTOR) as two:
        one.ingest([rec(0), rec(1, user="bob")])
        assert two.search(QA[1][0], 1, tenant="acme")[0].response == QA[1][1]
        two.ingest([rec(2), rec(3)])
        assert one.search(QA[3][0], 1, tenant="acme")[0].response == QA[3][1]

        two.forget(user="bob")
        assert QA[1][1] not in [h.response for h in one.search(QA[1][0], 4, tenant="acme")]
        for vm in (one, two):
            assert (vm.indexes.rebuilds, vm.indexes.follows) == (0, 0)
        assert vectors_match_rows(sql) and len(ids(sql, "SELECT id FROM experiences")) == 3


def test_a_faiss_memory_follows_a_pgvector_one_on_the_same_database(tmp_path: Path, embedder: Embedder,
                                                                     pgvector_db: str) -> None:
    with VectorMemory(tmp_path / "pg", embedder=embedder, db_url=pgvector_db, config=PGVECTOR) as pg, \
            VectorMemory(tmp_path / "faiss", embedder=embedder, db_url=pgvector_db) as local:
        assert local.search(QA[0][0], tenant="acme") == []
        pg.ingest([rec(0), rec(1)])
        assert local.search(QA[1][0], 1, tenant="acme")[0].response == QA[1][1]
        assert (local.indexes.rebuilds, local.indexes.follows) == (1, 1)  # the first, empty, load; then the log


@pytest.mark.parametrize("how", ["id", "user", "tenant"])
def test_forgetting_removes_the_vectors(tmp_path: Path, embedder: Embedder, pgvector_db: str, sql: Engine,
                                        how: str) -> None:
    with VectorMemory(tmp_path / "home", embedder=embedder, db_url=pgvector_db, config=PGVECTOR) as vm:
        vm.ingest([rec(0, user="bob"), rec(1), rec(2, tenant="globex", user="bob")])
        victim = vm.search(QA[0][0], 1, tenant="acme")[0].id
        forget = {"id": {"id": victim}, "user": {"user": "bob"}, "tenant": {"tenant": "acme"}}[how]

        vm.forget(**forget)

        left = ids(sql, "SELECT experience_id FROM experience_vectors")
        assert victim not in left and vectors_match_rows(sql)
        assert len(left) == {"id": 2, "user": 1, "tenant": 1}[how]
        assert QA[0][1] not in [h.response for h in vm.search(QA[0][0], 3, tenant="acme")]


def test_a_failed_write_leaves_no_vector(tmp_path: Path, embedder: Embedder, pgvector_db: str, sql: Engine,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with VectorMemory(tmp_path / "home", embedder=embedder, db_url=pgvector_db, config=PGVECTOR) as vm:
        vm.ingest([rec(0)])

        def crash(*args: Any, **kwargs: Any) -> int:  # the transaction fails after its vectors were written
            raise RuntimeError("crashed before commit")

        monkeypatch.setattr(vm.store, "bump_generation", crash)
        with pytest.raises(RuntimeError, match="crashed before commit"):
            vm.ingest([rec(1)])

        with sql.connect() as conn:
            assert conn.execute(select(func.count()).select_from(text("experience_vectors"))).scalar_one() == 1
        assert vectors_match_rows(sql)
        monkeypatch.undo()
        vm.ingest([rec(1)])
        assert vm.search(QA[1][0], 1, tenant="acme")[0].response == QA[1][1] and vectors_match_rows(sql)


def test_pgvector_needs_postgresql(tmp_path: Path, embedder: Embedder) -> None:
    with pytest.raises(ConfigError, match="needs a PostgreSQL database, not 'sqlite'"):
        VectorMemory(tmp_path / "home", embedder=embedder, config=PGVECTOR)
