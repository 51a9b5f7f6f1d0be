"""How long until a second process sees what the first ingested: following SQL's change log vs a rebuild?

    python benchmarks/bench_follow.py --out benchmarks/results [--size 100000] [--records 1000] [--rounds 3]
                                      [--db sqlite,postgres] [--pg-url URL] [--quick]

Two `VectorMemory` instances with their own homes (two processes, or two hosts) share one database: a
SQLite file, and a real PostgreSQL server (PyPI's `pgserver`, started here, unless `--pg-url`). The
tenant is first filled with `--size` experiences through the store (rows and vectors in SQL, logged in
the change log by `Store.bump_generation`; random unit vectors, 5,000 rows per transaction), and both
memories load it (a rebuild from SQL: no index file yet). Then, per round, the first memory ingests
`--records` new interactions (distinct templated questions, liked, embedded by the default MiniLM
embedder: each becomes an experience), and the second runs its next search: it finds SQL at a newer
generation and applies the logged changes (`TenantIndexes.get`). Timed: that first search whole, and
apart from it the change-log read alone. Against it, what the same search cost before the change log:
a rebuild of the tenant's index from every vector in SQL (timed once per database, as the next search
of a follower whose index is dropped). faiss searches on 1 thread (`MemoryConfig.search_threads`).
Writes `follow.json`, `follow.md` and `follow.png` to `--out`; `--plot-only` redraws the figure from an existing
`follow.json` without measuring again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from logmem.memory import Imported, MemoryConfig, VectorMemory  # noqa: E402

logger = logging.getLogger("bench_follow")
TENANT = "bench"
FILL_BATCH = 5_000
VERBS = ["sort", "merge", "split", "reverse", "parse", "serialize", "compress", "encrypt", "validate", "cache"]
ADJECTIVES = ["nested", "huge", "sparse", "sorted", "remote", "temporary", "binary", "unicode", "frozen", "shared"]
NOUNS = ["list", "dictionary", "file", "string", "tree", "graph", "matrix", "queue", "socket", "table"]
PLACES = ["in Python", "in Rust", "in Go", "in Java", "in C", "with SQL", "in a shell script", "in JavaScript"]


def questions() -> list[tuple[str, str]]:
    """Distinct (question, answer) pairs, shuffled with a fixed seed."""
    combos = list(itertools.product(VERBS, ADJECTIVES, NOUNS, PLACES))
    order = np.random.default_rng(0).permutation(len(combos))
    return [(f"How do I {v} a {a} {n} {p}?", f"Call {v}_{n}(x, {a}=True) {p}.")
            for v, a, n, p in (combos[i] for i in order)]


def record(i: int, qa: tuple[str, str]) -> dict[str, Any]:
    return {"id": f"q{i}", "tenant": TENANT, "user": f"u{i % 50}", "timestamp": 1_700_000_000 + i,
            "messages": [{"role": "user", "content": qa[0]}, {"role": "assistant", "content": qa[1]}],
            "feedback": [{"turn": 1, "kind": "like"}]}


def fill(memory: VectorMemory, size: int) -> float:
    """`size` experiences with random unit vectors, imported in bulk (`VectorMemory.import_experiences`); returns
    seconds."""
    rng, t0 = np.random.default_rng(1), time.perf_counter()
    for start in range(0, size, FILL_BATCH):
        n = min(FILL_BATCH, size - start)
        xb = rng.standard_normal((n, memory.d)).astype(np.float32)
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        memory.import_experiences([Imported(f"filler question {start + j}", f"filler answer {start + j}", xb[j],
                                            alpha=1.0, created_at=1.6e9) for j in range(n)], tenant=TENANT,
                                  batch=FILL_BATCH)
    return time.perf_counter() - t0


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(db: str, url: str, homes: Path, size: int, n_records: int, rounds: int, embedder: Any) -> dict[str, Any]:
    config = MemoryConfig()
    pairs = questions()
    assert rounds * n_records <= len(pairs), f"at most {len(pairs)} distinct questions"
    with VectorMemory(homes / "one", embedder=embedder, db_url=url, config=config) as one, \
            VectorMemory(homes / "two", embedder=embedder, db_url=url, config=config) as two:
        fill_s = fill(one, size)
        _, one_load_s = timed(lambda: one.indexes.get(TENANT))
        _, two_load_s = timed(lambda: two.indexes.get(TENANT))
        kind = two.indexes.get(TENANT).kind
        one.search(pairs[0][0], 5, tenant=TENANT)  # warm the embedder and the kernels
        rebuilds_before = two.indexes.rebuilds
        out_rounds = []
        for r in range(rounds):
            batch = [record(i, pairs[i]) for i in range(r * n_records, (r + 1) * n_records)]
            at = two.indexes.current(TENANT)[1]
            report, ingest_s = timed(lambda batch=batch: one.ingest(batch))
            xq = embedder.encode([batch[0]["messages"][0]["content"]])[0]
            hits, follow_s = timed(lambda xq=xq: two.search_vector(xq, 5, tenant=TENANT))
            delta, read_s = timed(lambda at=at: two.store.changes(tenant=TENANT, after=at, d=two.d))
            _, next_s = timed(lambda xq=xq: two.search_vector(xq, 5, tenant=TENANT))
            out_rounds.append({"round": r, "records": len(batch), "new_experiences": report.experiences,
                               "merged": report.merged, "writer_ingest_s": ingest_s,
                               "follow_search_ms": follow_s * 1e3, "log_read_ms": read_s * 1e3,
                               "delta_added": int(len(delta.ids)) if delta is not None else -1,
                               "next_search_ms": next_s * 1e3,
                               "seen": bool(hits) and hits[0].response == batch[0]["messages"][1]["content"]})
            logger.info("%s round %d: %s", db, r, out_rounds[-1])
        rebuilds_during = two.indexes.rebuilds - rebuilds_before
        n_sql = len(two.store.vectors(tenant=TENANT, d=two.d)[0])
        consistent = len(two.indexes.get(TENANT)) == n_sql
        two.indexes.invalidate(TENANT)  # what the next search did before the change log: rebuild from SQL
        _, rebuild_s = timed(lambda: two.search_vector(xq, 5, tenant=TENANT))
    follow = np.array([r["follow_search_ms"] for r in out_rounds])
    return {"db": db, "size": size, "index": kind, "fill_s": fill_s, "first_load_s": [one_load_s, two_load_s],
            "rounds": out_rounds, "follow_p50_ms": float(np.median(follow)), "follow_max_ms": float(follow.max()),
            "log_read_p50_ms": float(np.median([r["log_read_ms"] for r in out_rounds])),
            "rebuild_s": rebuild_s, "speedup": rebuild_s * 1e3 / float(np.median(follow)),
            "rebuilds_while_following": rebuilds_during, "index_matches_sql": consistent, "experiences": n_sql}


def table(rows: list[dict[str, Any]], n_records: int) -> str:
    lines = ["| database | memories | index | records per ingest | new experiences | writer's ingest, s | follower's "
             "next search (delta), ms p50 / max | of which log read, ms | rebuild from SQL (before), s | faster | "
             "rebuilds while following | follower = SQL |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        new = "/".join(str(x["new_experiences"]) for x in r["rounds"])
        ingest = "/".join(f"{x['writer_ingest_s']:.1f}" for x in r["rounds"])
        lines.append(f"| {r['db']} | {r['size']:,} | {r['index']} | {n_records:,} | {new} | {ingest} | "
                     f"{r['follow_p50_ms']:.1f} / {r['follow_max_ms']:.1f} | {r['log_read_p50_ms']:.1f} | "
                     f"{r['rebuild_s']:.2f} | {r['speedup']:.0f}x | {r['rebuilds_while_following']} | "
                     f"{'yes' if r['index_matches_sql'] and all(x['seen'] for x in r['rounds']) else 'NO'} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Per database: the follower's next search by the change log (each round and p50) against a rebuild from SQL,
    on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from common import save_figure  # benchmarks/ is on sys.path when run as a script

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = np.arange(len(rows))
    follow = [r["follow_p50_ms"] / 1e3 for r in rows]
    rebuild = [r["rebuild_s"] for r in rows]
    ax.bar(x - 0.2, follow, 0.4, label="follow the change log (p50 of rounds)")
    ax.bar(x + 0.2, rebuild, 0.4, label="rebuild from SQL (before the log)")
    for i, r in enumerate(rows):
        ax.plot([i - 0.2] * len(r["rounds"]), [v["follow_search_ms"] / 1e3 for v in r["rounds"]], "k.",
                label="each round" if i == 0 else None)
        ax.annotate(f"{follow[i]:.2f} s", (i - 0.2, follow[i]), ha="center", va="bottom", fontsize=8)
        ax.annotate(f"{rebuild[i]:.0f} s ({r['speedup']:.0f}x)", (i + 0.2, rebuild[i]), ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(x, [f"{r['db']}\n{r['size']:,} memories, {r['index']}" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("seconds until the follower's next search answers")
    ax.set_title(f"A second process sees a {result['meta']['records']:,}-record ingest of the first")
    save_figure(fig, [ax], path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--records", type=int, default=1_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--db", default="sqlite,postgres")
    p.add_argument("--pg-url", default=None, help="a PostgreSQL server to use (default: start pgserver)")
    p.add_argument("--quick", action="store_true", help="2,000 memories, 100 records, 2 rounds (a smoke test)")
    p.add_argument("--plot-only", action="store_true", help="redraw follow.png from follow.json in --out")
    args = p.parse_args(argv)
    if args.plot_only:
        plot(json.loads((args.out / "follow.json").read_text()), args.out / "follow.png")
        return 0
    if args.quick:
        args.size, args.records, args.rounds = 2_000, 100, 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from logmem.model.embedding import default_embedder

    embedder = default_embedder()
    rows, server, load_start = [], None, os.getloadavg()
    try:
        for db in args.db.split(","):
            with tempfile.TemporaryDirectory(prefix=f"bench-follow-{db}-") as tmp:
                if db == "sqlite":
                    url = f"sqlite:///{Path(tmp) / 'shared.db'}"
                else:
                    if args.pg_url is None and server is None:
                        import pgserver

                        server = pgserver.get_server(Path(tempfile.mkdtemp(prefix="bench-follow-pg-")),
                                                     cleanup_mode="delete")
                    base = args.pg_url or server.get_uri()
                    url = base.replace("postgresql://", "postgresql+psycopg://", 1)
                rows.append(measure(db, url, Path(tmp), args.size, args.records, args.rounds, embedder))
    finally:
        if server is not None:
            server.cleanup()
    args.out.mkdir(parents=True, exist_ok=True)
    name = "follow_quick" if args.quick else "follow"
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "faiss": faiss.__version__, "embedder": embedder.name,
            "search_threads": MemoryConfig().search_threads, "records": args.records, "rounds": args.rounds,
            "load_avg_start": load_start, "load_avg_end": os.getloadavg()}
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = ["# A second process sees a first one's ingest: change-log delta vs rebuild", "",
          f"`python benchmarks/bench_follow.py --size {args.size} --records {args.records} --rounds {args.rounds}`"
          f" on {meta['cpus']} cores. Filled with random unit vectors through the store; each round the first "
          "memory ingests new liked interactions (real MiniLM vectors), then the second memory's next search is "
          "timed: it applies the change log. 'Rebuild' is what that search cost before the log: the tenant's "
          "index rebuilt from every vector in SQL. Rounds are separated by '/'. Load average "
          f"{meta['load_avg_start'][0]:.1f} at start, {meta['load_avg_end'][0]:.1f} at end.", "",
          table(rows, args.records), ""]
    (args.out / f"{name}.md").write_text("\n".join(md))
    plot({"meta": meta, "rows": rows}, args.out / f"{name}.png")
    logger.info("wrote %s", args.out / f"{name}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
