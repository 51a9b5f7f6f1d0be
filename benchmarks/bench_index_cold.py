"""Where a tenant's index should turn from exact (flat) to HNSW: both searched as a request searches them, right after
the embedder ran (which leaves the caches cold), at several sizes.

On real MiniLM embeddings of ShareGPT user turns (grown past the real ones with synthetic vectors kept inside real
neighbourhoods, see `data.py`), each size gets logmem's `flat` and `hnsw` indexes (the HNSW beam the memory gives a
tenant of that size, `ef_search_for`); per query, the embedder runs on a request first, then each index is searched
for the memory's 32 candidates. Reported: p50 per index, and the HNSW's recall of the exact top 5 and top 32. The
default `approx_threshold` (`MemoryConfig`) is where HNSW becomes the faster. Writes index_cold.json, .md and .png.

    python benchmarks/bench_index_cold.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from common import save_figure, sized
from data import grow, load_corpus
from logmem.memory import MemoryConfig
from logmem.memory.index import make_index
from logmem.memory.indexes import ef_search_for, index_settings
from tqdm import tqdm

logger = logging.getLogger("bench_index_cold")

FETCH = MemoryConfig().fetch_k  # the candidates a search asks its index for
FULL = {"sizes": [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000], "queries": 200, "max_texts": 29_800}
QUICK = {"sizes": [300, 1_500], "queries": 20, "max_texts": 1_000}


# the HNSW graphs compared: the defaults, and the graph of earlier versions (whose files a memory still loads)
GRAPHS = {"hnsw": MemoryConfig(), "hnsw_m32_efc64": MemoryConfig(hnsw_m=32, hnsw_ef_construction=64)}


def measure(size: int, base: np.ndarray, xq: np.ndarray, requests: list[str], embedder: Any) -> dict[str, Any]:
    xb = grow(base, size, seed=0)
    ids = np.arange(1, size + 1, dtype=np.int64)
    indexes = {"flat": make_index("flat", xb.shape[1], threads=1)}
    for name, config in GRAPHS.items():
        indexes[name] = make_index("hnsw", xb.shape[1], **{**index_settings(config), "threads": 1})
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # built on every core, searched on one (as the memory does)
    built = {}
    for name, index in indexes.items():
        start = time.perf_counter()
        index.add(ids, xb)
        built[name] = time.perf_counter() - start
    for name, config in GRAPHS.items():  # the beam the memory gives a tenant of this size on this graph
        indexes[name].ef_search = ef_search_for(size, config, config.hnsw_ef_construction)  # type: ignore
    ms: dict[str, list[float]] = {name: [] for name in indexes}
    top5 = dict.fromkeys(GRAPHS, 0.0)
    top32 = dict.fromkeys(GRAPHS, 0.0)
    for j, q in enumerate(xq):
        got = {}
        for name, index in indexes.items():
            embedder.encode([requests[j % len(requests)]])  # a request's embedding first: the caches it leaves
            start = time.perf_counter()
            got[name] = index.search(q[None, :], FETCH)[1][0]
            ms[name].append((time.perf_counter() - start) * 1e3)
        for name in GRAPHS:
            top5[name] += len(set(got["flat"][:5].tolist()) & set(got[name][:5].tolist())) / 5
            top32[name] += len(set(got["flat"].tolist()) & set(got[name].tolist())) / FETCH
    row: dict[str, Any] = {"size": size, "queries": len(xq)}
    for name in indexes:
        row.update({f"{name}_p50_ms": float(np.median(ms[name])), f"{name}_p95_ms": float(np.percentile(ms[name], 95))})
    for name in GRAPHS:
        row.update({f"{name}_ef_search": indexes[name].ef_search, f"{name}_build_s": built[name],  # type: ignore
                    f"{name}_recall_top5": top5[name] / len(xq), f"{name}_recall_top32": top32[name] / len(xq)})
    return row


def markdown(result: dict[str, Any]) -> str:
    old = GRAPHS["hnsw_m32_efc64"]
    new = GRAPHS["hnsw"]
    lines = ["# Flat or HNSW: a tenant's index searched cold, after the embedder", "",
             f"{result['source']}, grown past {result['args']['max_texts']:,} real turns; {FETCH} candidates a "
             f"search, one thread; before each search the embedder (ONNX MiniLM) runs on a request. Load average "
             f"{result['load'][0]:.2f} at start, {result['load'][1]:.2f} at end; {result['seconds']:.0f} s.", "",
             f"HNSW: the default graph (m {new.hnsw_m}, built with a beam of {new.hnsw_ef_construction}) and the "
             f"graph of earlier versions (m {old.hnsw_m}, built at {old.hnsw_ef_construction}), each searched with "
             "the beam the memory gives a tenant of that size on it (`ef_search_for`), in the same turns.", "",
             "| experiences | flat p50 / p95 ms | HNSW p50 / p95 ms (beam) | its recall of the exact top 5 / top 32 "
             "| build s | earlier graph p50 / p95 ms (beam) | its recall of the exact top 5 / top 32 | build s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cells = [f"{r['size']:,}", f"{r['flat_p50_ms']:.3f} / {r['flat_p95_ms']:.3f}"]
        for name in ("hnsw", "hnsw_m32_efc64"):
            cells += [f"{r[name + '_p50_ms']:.3f} / {r[name + '_p95_ms']:.3f} ({r[name + '_ef_search']})",
                      f"{r[name + '_recall_top5']:.3f} / {r[name + '_recall_top32']:.3f}",
                      f"{r[name + '_build_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    faster = [r["size"] for r in result["rows"] if r["hnsw_p50_ms"] < r["flat_p50_ms"]]
    lines += ["", f"HNSW is the faster from {min(faster):,} experiences measured here; `MemoryConfig.approx_threshold`"
              f" is {MemoryConfig().approx_threshold:,}." if faster else "", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = [r["size"] for r in result["rows"]]
    for key, label in (("flat_p50_ms", "flat (exact)"), ("hnsw_p50_ms", "HNSW"),
                       ("hnsw_m32_efc64_p50_ms", "HNSW, the earlier graph")):
        ax.plot(sizes, [r[key] for r in result["rows"]], marker="o", label=label)
    ax.axvline(MemoryConfig().approx_threshold, color="grey", linestyle=":", label="approx_threshold")
    ax.set(xscale="log", xlabel="experiences in the tenant", ylabel="search p50 ms, cold after the embedder")
    save_figure(fig, [ax], path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help=f"default {FULL['sizes']}")
    p.add_argument("--queries", type=int, help=f"held-out real turns asked, default {FULL['queries']}")
    p.add_argument("--max-texts", type=int, help=f"real turns under the grown ones, default {FULL['max_texts']}")
    p.add_argument("--cache", type=Path, default=Path(__file__).parent / "results" / "cache",
                   help="where the embedded ShareGPT turns are cached (shared with bench_retrieval)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK} (a smoke test)")
    args = sized(p.parse_args(argv), FULL, QUICK)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from data import load_texts
    from logmem.model.embedding import default_embedder

    start, load = time.perf_counter(), os.getloadavg()[0]
    corpus = load_corpus(args.cache, args.queries, args.max_texts)
    requests = load_texts(args.queries, seed=1)  # other turns, embedded before each search as requests are
    embedder = default_embedder(runtime="onnx", threads=1, query_cache=0)
    embedder.encode(["warm up the embedder"])
    rows = [measure(size, corpus.xb, corpus.xq, requests, embedder) for size in tqdm(args.sizes, desc="sizes")]
    result = {"rows": rows, "args": {k: v for k, v in vars(args).items() if k != "cache"},
              "source": corpus.source, "load": [load, os.getloadavg()[0]], "seconds": time.perf_counter() - start,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "faiss": faiss.__version__}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index_cold.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "index_cold.md").write_text(markdown(result))
    plot(result, args.out / "index_cold.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
