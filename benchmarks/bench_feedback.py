"""What does persisting one feedback cost, at 1k and at 100k memories, now that index files are checkpointed?

    python benchmarks/bench_feedback.py --logs data/nfcats/logs.jsonl --out benchmarks/results [--quick]

For each size a fresh SQLite home gets N experiences through the store (large transactions): the real
experiences of the logs (ingested once, all but the held-out records: real MiniLM vectors, texts and shared
instructions), then synthetic ones up to N whose vectors stay inside a real vector's neighbourhood
(`data.grow`) and whose texts are numbered copies of real ones. The index is rebuilt from SQL as a serving
process would (flat under `approx_threshold`, HNSW above) and its file written. Then, per held-out record,
a served answer is logged (`VectorMemory.log_answer` with the hits a search gives, as a chat does) and
judged with `VectorMemory.feedback`: `like` on half the answers (a new experience: embedding, a neighbour
search, rows, a vector), `correction` on the other half (the corrected answer becomes an experience with
the served one as `rejected`). Measured per call: p50 / p95 / mean, with the calls that wrote a checkpoint
counted apart. Beside it, what every such feedback paid before checkpointing: a full write of the tenant's
index file (`TenantIndexes.write`), timed on its own.

faiss searches on 1 thread (PERFORMANCE.md: more is slower for one query on 2 cores) and builds on 2;
torch (the embedder) on 1 thread. Writes `feedback_cost.json` and `feedback_cost.md` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from common import sized  # noqa: E402  # benchmarks/ is on sys.path when run as a script
from data import grow  # noqa: E402

TENANT = "default"
INSERT_BATCH = 20_000  # experiences per transaction while building
FULL = {"sizes": "1000,100000", "n": 100, "writes": 10}
QUICK = {"sizes": "1000,5000", "n": 10, "writes": 3}


@dataclass(frozen=True)
class Base:
    """The real experiences the synthetic memory is grown from."""

    rows: list[Any]  # ExperienceData of the ingested logs
    xb: np.ndarray  # (nb, d) their real MiniLM vectors
    instructions: set[str]  # the shared instructions the ingest learned
    held: list[dict[str, Any]]  # held-out records: served, then judged
    answers: list[str]  # every assistant answer of the logs (corrections pick a different one)


# --- building ------------------------------------------------------------------------------------
def read_base(logs: Path, n_held: int, embedder: Any) -> Base:
    """Ingest all but `n_held` records into a scratch home (the real path) and read back what it learned."""
    from logmem.memory import VectorMemory

    records = [json.loads(line) for line in logs.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = np.random.default_rng(0).permutation(len(records))
    n_held = min(n_held, len(records) // 2)
    held, kept = [records[i] for i in order[:n_held]], [records[i] for i in order[n_held:]]
    answers = sorted({m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"})
    with tempfile.TemporaryDirectory(prefix="bench-feedback-base-") as home, \
            VectorMemory(home, embedder=embedder) as memory:
        memory.ingest(kept, tenant=TENANT)
        rows = list(memory.iter_experiences(TENANT))
        instructions = memory.instructions.known(TENANT)
    xb = np.vstack([r.vector for r in rows]).astype(np.float32)
    return Base(rows, xb, instructions, held, answers)


def build_memory(home: Path, base: Base, size: int, embedder: Any) -> tuple[Any, dict[str, float]]:
    """A memory of `size` experiences: the real ones, then neighbourhood-grown synthetic ones, written through
    the store in INSERT_BATCH transactions; its index rebuilt from SQL and written. Returns (memory, timings)."""
    from logmem.memory import VectorMemory

    t0 = time.perf_counter()
    xb = grow(base.xb, size, seed=size)
    memory = VectorMemory(home, embedder=embedder)
    t1 = time.perf_counter()
    memory.import_experiences([_imported(base.rows[i % len(base.rows)], i, i >= len(base.rows), xb[i])
                               for i in range(size)], tenant=TENANT, batch=INSERT_BATCH,
                              instructions={t: memory.config.shared_min_count for t in base.instructions})
    t2 = time.perf_counter()
    faiss.omp_set_num_threads(2)  # a build is a batch: both cores
    memory.indexes.get(TENANT)  # rebuilt from SQL, as the next process would
    faiss.omp_set_num_threads(1)
    t3 = time.perf_counter()
    memory.save()
    t4 = time.perf_counter()
    return memory, {"grow_s": t1 - t0, "insert_s": t2 - t1, "index_build_s": t3 - t2, "first_write_s": t4 - t3}


def _imported(src: Any, i: int, synthetic: bool, vector: np.ndarray) -> Any:
    """Experience `i`: a real one, or a numbered copy of one with vector `vector`."""
    from logmem.memory import Imported

    return Imported(f"{src.trigger} [{i}]" if synthetic else src.trigger, src.response, vector, user=src.user,
                    instruction=src.instruction, lesson=src.lesson, rejected=src.rejected, alpha=src.alpha,
                    beta=src.beta, created_at=src.created_at)


def serve(memory: Any, base: Base, prefix: str) -> list[tuple[str, str, str]]:
    """Log a served answer per held-out record, as a chat does; returns (id, answer, a different answer)."""
    rng = random.Random(0)
    out = []
    for j, rec in enumerate(base.held):
        user = next(m["content"] for m in rec["messages"] if m["role"] == "user")
        answer = next((m["content"] for m in rec["messages"] if m["role"] == "assistant"), "OK")
        iid = f"{prefix}-{j}"
        memory.log_answer(tenant=TENANT, interaction_id=iid, messages=[{"role": "user", "content": user}],
                          answer=answer, hits=memory.search(user, 8, tenant=TENANT), user=rec.get("user"))
        other = [a for a in base.answers if a != answer]
        out.append((iid, answer, rng.choice(other) if other else f"not {answer}"))
    return out


# --- measuring -----------------------------------------------------------------------------------
def judge_all(memory: Any, served: list[tuple[str, str, str]]) -> dict[str, dict[str, Any]]:
    """Time `memory.feedback` per answer: like on the first half, correction on the second. A call that
    wrote the index file (a checkpoint) is told by the saved generation it leaves behind."""
    half = len(served) // 2
    series: dict[str, dict[str, Any]] = {}
    for kind, part in (("like", served[:half]), ("correction", served[half:])):
        ms, wrote, learned = [], [], 0
        for iid, _, other in part:
            before = memory.indexes.saved_generation(TENANT)
            t0 = time.perf_counter_ns()
            result = memory.feedback(iid, kind, tenant=TENANT, text=other if kind == "correction" else None)
            ms.append((time.perf_counter_ns() - t0) / 1e6)
            wrote.append(memory.indexes.saved_generation(TENANT) != before)
            learned += result.experiences
        series[kind] = summarize(ms, wrote) | {"new_experiences": learned}
    return series


def summarize(ms: list[float], wrote: list[bool]) -> dict[str, Any]:
    a = np.array(ms)
    plain = a[~np.array(wrote, dtype=bool)]
    with_write = a[np.array(wrote, dtype=bool)]
    return {"n": len(a), "p50_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()), "max_ms": float(a.max()), "checkpoints": int(len(with_write)),
            "p50_without_checkpoint_ms": float(np.median(plain)) if len(plain) else float("nan"),
            "mean_with_checkpoint_ms": float(with_write.mean()) if len(with_write) else float("nan"),
            "ms": [round(x, 3) for x in ms], "wrote": wrote}


def full_writes(memory: Any, n: int) -> dict[str, Any]:
    """Time n full writes of the tenant's index file (what every feedback paid before checkpointing)."""
    meta = memory.indexes.path(TENANT).with_suffix(".json")
    ms = []
    for _ in range(n):
        meta.unlink(missing_ok=True)  # else the write is skipped: the file already holds this generation
        t0 = time.perf_counter_ns()
        memory.indexes.write(TENANT)
        ms.append((time.perf_counter_ns() - t0) / 1e6)
    a = np.array(ms)
    size = memory.indexes.path(TENANT).stat().st_size
    return {"n": n, "p50_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)), "mean_ms": float(a.mean()),
            "file_mb": size / 2**20, "kind": memory.indexes.get(TENANT).kind, "ms": [round(x, 3) for x in ms]}


def measure_size(base: Base, size: int, writes: int, embedder: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-feedback-{size}-") as home:
        memory, build = build_memory(Path(home), base, size, embedder)
        try:
            served = serve(memory, base, f"s{size}")
            for _ in range(3):  # warm the kernels and the embedder on answers that are not measured
                memory.feedback(served.pop()[0], "dislike", tenant=TENANT)
            series = judge_all(memory, served)
            write = full_writes(memory, writes)
            n_exp = len(memory.indexes.get(TENANT))
        finally:
            memory.close()
    cfg = memory.config
    row: dict[str, Any] = {"size": size, "experiences_after": n_exp, "index": write["kind"], "build": build,
                           "feedback": series, "full_write": write}
    # what a checkpoint added to the feedback that wrote it (the file is new then, and written back meanwhile):
    # often more than a rewrite of the same file alone, so 'now' uses the larger of the two
    extra = [ms - s["p50_without_checkpoint_ms"] for s in series.values() for ms, w in zip(s["ms"], s["wrote"]) if w]
    row["checkpoint_in_feedback_ms"] = float(np.mean(extra)) if extra else float("nan")
    write_cost = max(write["mean_ms"], row["checkpoint_in_feedback_ms"]) if extra else write["mean_ms"]
    for kind, s in series.items():
        row[f"{kind}_before_ms"] = s["p50_without_checkpoint_ms"] + write["p50_ms"]  # a write on every call
        row[f"{kind}_amortized_ms"] = s["p50_without_checkpoint_ms"] + write_cost / cfg.checkpoint_changes
    return row


# --- output --------------------------------------------------------------------------------------
def tables(rows: list[dict[str, Any]], checkpoint_changes: int) -> str:
    lines = ["| size | index | feedback | n | p50 ms | p95 ms | mean ms (incl. checkpoints) | calls that wrote "
             "a checkpoint (their mean ms) | full index write, alone p50 / inside a feedback ms (file) | before: p50 + "
             f"a write, ms | now: p50 + write / {checkpoint_changes}, ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        w = r["full_write"]
        inside = r["checkpoint_in_feedback_ms"]
        for kind, s in r["feedback"].items():
            ck = f"{s['checkpoints']} ({s['mean_with_checkpoint_ms']:.1f})" if s["checkpoints"] else "0"
            lines.append(f"| {r['size']:,} | {r['index']} | {kind} | {s['n']} | {s['p50_ms']:.1f} | "
                         f"{s['p95_ms']:.1f} | {s['mean_ms']:.1f} | {ck} | {w['p50_ms']:.1f} / "
                         f"{'-' if np.isnan(inside) else f'{inside:.1f}'} ({w['file_mb']:.1f} MB) | "
                         f"{r[f'{kind}_before_ms']:.1f} | {r[f'{kind}_amortized_ms']:.1f} |")
    return "\n".join(lines)


def build_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | grow vectors s | insert rows s | index rebuild s | first index write ms |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['size']:,} | {r['build']['grow_s']:.1f} | {r['build']['insert_s']:.1f} | "
              f"{r['build']['index_build_s']:.1f} | {r['build']['first_write_s'] * 1e3:.1f} |" for r in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", default="data/nfcats/logs.jsonl",
                   help="native-schema JSONL: the real texts and vectors (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--quick", action="store_true", help=f"CI sizes: {QUICK}")
    p.add_argument("--sizes", help=f"comma-separated memory sizes (default {FULL['sizes']})")
    p.add_argument("--n", type=int, help=f"feedback calls per kind and size (default {FULL['n']})")
    p.add_argument("--writes", type=int, help=f"timed full index writes per size (default {FULL['writes']})")
    args = p.parse_args(argv)
    return sized(args, FULL, QUICK)


def main(argv: list[str] | None = None) -> int:
    import torch
    from logmem.memory import MemoryConfig
    from logmem.model.embedding import default_embedder

    args = parse_args(argv)
    started, load_start = time.perf_counter(), os.getloadavg()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    embedder = default_embedder()
    base = read_base(Path(args.logs), 2 * args.n + 3, embedder)
    print(f"base: {len(base.rows)} real experiences, {len(base.held)} held-out records", flush=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows.append(measure_size(base, size, args.writes, embedder))
        print(f"size {size:,} done", flush=True)
    cfg = MemoryConfig()
    result = {"logs": args.logs, "quick": args.quick, "rows": rows, "real_experiences": len(base.rows),
              "checkpoint_changes": cfg.checkpoint_changes, "checkpoint_seconds": cfg.checkpoint_seconds,
              "machine": {"python": platform.python_version(), "cores": os.cpu_count(), "faiss": faiss.__version__,
                          "torch_threads": 1, "faiss_search_threads": 1},
              "load_avg_start": load_start, "load_avg_end": os.getloadavg(), "wall_s": time.perf_counter() - started}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "feedback_cost.json").write_text(json.dumps(result, indent=1))
    text = "\n".join([
        "# The cost of persisting one feedback", "",
        f"Data: {args.logs}: {len(base.rows)} real experiences (real all-MiniLM-L6-v2 vectors of the logs' "
        "requests, shared instruction stripped as the memory does), grown to each size with synthetic vectors "
        "inside real neighbourhoods (`data.grow`) and numbered copies of the real texts; served answers are "
        f"held-out real records. One call per answer; {args.n} likes then {args.n} corrections per size. "
        f"Index files are checkpointed every {cfg.checkpoint_changes} changes or {cfg.checkpoint_seconds:.0f} s; "
        "'before' adds a full index write (alone, p50: a lower bound) to every call, as each feedback paid before "
        "checkpointing; 'now' adds 1/64 of the larger of that and what a checkpoint added to the call that wrote "
        "it. "
        f"faiss 1 thread for searches (2 for builds), torch 1 thread; {os.cpu_count()} cores; load average "
        f"{load_start[0]:.2f} at start, {result['load_avg_end'][0]:.2f} at end; whole run {result['wall_s']:.0f} s"
        f"{' (--quick)' if args.quick else ''}.", "",
        tables(rows, cfg.checkpoint_changes), "", "Building each memory (not measured above):", "",
        build_table(rows), ""])
    (out / "feedback_cost.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
