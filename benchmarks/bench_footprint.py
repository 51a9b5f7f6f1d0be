"""What does a memory cost on one machine: bytes per experience in SQL and in the index, and the RSS of a process
that opens it and searches it, for the default index kind and the compact one (`hnsw_sq8`)?

Per size, one SQLite database is filled through the store's own bulk path (`Store.transaction`, experience rows
inserted 5,000 per transaction with their source rows and the change log, as `bench_follow.py` does; nothing is
embedded): the real-vector sets of `bench_retrieval.py` (MiniLM vectors of ShareGPT user turns, grown past the
30k real ones with neighbourhood-perturbed synthetic vectors, `data.py`), with short placeholder texts whose
lengths the results give. Then per index kind: a builder process (this one) opens the memory with that kind,
builds the tenant's index from SQL (timed: read from SQL + build) and writes its file (`VectorMemory.save`).
Then a fresh subprocess opens the memory, loads the file (no rebuild: checked), and searches it one query per
call: the index alone (`Index.search`, k=10, at each efSearch of the sweep: p50/p95 wall and CPU time, recall@10
against exact search), then the whole `VectorMemory.search_vector` (k=5 of fetch_k candidates: the SQL load of
the candidates, scoring, MMR), then a few text searches (the ONNX embedder loaded). Its RSS is read from
/proc/self/status (VmRSS, RssAnon, RssFile, VmHWM) after each stage, never estimated. Writes footprint.json,
.md and .png to --out (footprint_quick.* under --quick: 5,000 seeded clustered vectors, no cache needed).

    python benchmarks/bench_footprint.py --out benchmarks/results [--sizes 100000,1000000] [--kinds hnsw,hnsw_sq8]
    python benchmarks/bench_footprint.py --quick --out /tmp/fp
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

logger = logging.getLogger("bench_footprint")
TENANT = "bench"
FILL_BATCH = 5_000
K = 10
WARMUP = 20
TRIGGER_CHARS = 120  # placeholder text lengths of each experience (real ones vary; stated in the results)
RESPONSE_CHARS = 300
TEXT_QUERIES = ["How do I reverse a list in Python?", "Write a poem about the sea.",
                "What is the capital of France?", "Explain how a hash map works.", "Summarize this article for me."]


def rss() -> dict[str, int]:
    """This process's memory in bytes, from /proc/self/status."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


# --- data ---------------------------------------------------------------------------------
def vectors(size: int, quick: bool, cache: Path, n_queries: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(base (size, d), queries, what they are)."""
    if quick:
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((50, 384)).astype(np.float32)

        def draw(n: int) -> np.ndarray:
            x = centres[rng.integers(0, 50, n)] + 0.6 * rng.standard_normal((n, 384)).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        return draw(size), draw(n_queries), f"seeded clustered unit vectors ({size:,}; --quick)"
    from data import grow, load_corpus  # benchmarks/ is on sys.path when run as a script

    corpus = load_corpus(cache, n_queries, 30_000)
    real = min(size, len(corpus.xb))
    what = (f"real MiniLM vectors of ShareGPT turns ({real:,})" if size <= len(corpus.xb) else
            f"real MiniLM vectors of ShareGPT turns {real:,} + synthetic {size - real:,} (neighbourhood-perturbed)")
    return grow(corpus.xb, size), corpus.xq, what


def ground_truth(xb: np.ndarray, xq: np.ndarray) -> np.ndarray:
    import faiss

    faiss.omp_set_num_threads(2)
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    return flat.search(xq, K)[1]


def fill(db_url: str, home: Path, xb: np.ndarray) -> tuple[np.ndarray, float]:
    """The tenant's experiences with vectors `xb`, through the store (rows, sources, change log): their ids (by
    row of `xb`) and the seconds it took."""
    from logmem.memory import Imported, MemoryConfig, VectorMemory
    from logmem.model.embedding import default_embedder
    from tqdm import tqdm

    trigger = "q" * (TRIGGER_CHARS - 16)
    response = "a" * (RESPONSE_CHARS - 16)
    t0, all_ids = time.perf_counter(), []
    with VectorMemory(home, embedder=default_embedder(), db_url=db_url,
                      config=MemoryConfig(index_kind="exact")) as vm:
        for start in tqdm(range(0, len(xb), FILL_BATCH), desc=f"fill {len(xb):,}", unit="batch"):
            n = min(FILL_BATCH, len(xb) - start)
            ids = vm.import_experiences([Imported(f"{trigger} {start + j:>15}", f"{response} {start + j:>15}",
                                                  xb[start + j], alpha=1.0, created_at=1.6e9) for j in range(n)],
                                        tenant=TENANT, batch=FILL_BATCH)
            all_ids += ids
    return np.array(all_ids, dtype=np.int64), time.perf_counter() - t0


def build(db_url: str, home: Path, kind: str, ef: int, sq8_m: int) -> dict[str, Any]:
    """The tenant's index of `kind` built from SQL and saved under `home`: times and sizes."""
    from logmem.memory import MemoryConfig, VectorMemory
    from logmem.model.embedding import default_embedder

    with VectorMemory(home, embedder=default_embedder(), db_url=db_url,
                      config=MemoryConfig(index_kind=kind, hnsw_ef_search=ef, hnsw_sq8_m=sq8_m)) as vm:
        t0 = time.perf_counter()
        index = vm.indexes.get(TENANT)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        vm.save()
        save_s = time.perf_counter() - t0
        resolved, n = index.kind, len(index)
    (path,) = (home / "index").glob("*.idx")
    return {"kind": kind, "resolved_kind": resolved, "vectors": n, "build_s": build_s, "save_s": save_s,
            "index_file_bytes": path.stat().st_size, "builder_rss": rss()}


# --- the searching process ------------------------------------------------------------------
def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: open, load, search; RSS after each stage."""
    out: dict[str, Any] = {"rss_imported": rss()}
    from logmem.memory import MemoryConfig, VectorMemory
    from logmem.model.embedding import default_embedder

    xq = np.load(spec["queries"])
    gt = np.load(spec["truth"])
    home = Path(spec["home"])
    config = MemoryConfig(index_kind=spec["kind"], hnsw_ef_search=spec["ef"],
                          hnsw_sq8_m=spec.get("sq8_m", MemoryConfig().hnsw_sq8_m))
    t0 = time.perf_counter()
    vm = VectorMemory(home, embedder=default_embedder(), db_url=spec["db_url"], config=config)
    index = vm.indexes.get(TENANT)
    out["open_load_s"] = time.perf_counter() - t0
    out["rebuilds"] = vm.indexes.rebuilds
    out["loaded_kind"] = index.kind
    out["rss_loaded"] = rss()
    sweep = []
    for ef in spec["ef_sweep"]:
        index.ef_search = ef  # type: ignore[attr-defined]
        for q in xq[:WARMUP]:
            index.search(q[None, :], K)
        wall, cpu, found = [], [], []
        for q in xq:
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            _, ids = index.search(q[None, :], K)
            cpu.append((time.thread_time_ns() - c0) / 1e6)
            wall.append((time.perf_counter_ns() - t0) / 1e6)
            found.append(ids[0])
        recall = float(np.mean([len(np.intersect1d(a[a >= 0], b)) / K for a, b in zip(found, gt)]))
        sweep.append({"ef_search": ef, "p50_ms": float(np.percentile(wall, 50)),
                      "p95_ms": float(np.percentile(wall, 95)),
                      "cpu_p50_ms": float(np.percentile(cpu, 50)), "recall": recall})
        logger.info("%s", sweep[-1])
    out["sweep"] = sweep
    out["rss_index_searched"] = rss()
    index.ef_search = spec["ef"]  # type: ignore[attr-defined]
    for q in xq[:WARMUP]:
        vm.search_vector(q, 5, tenant=TENANT)
    wall = []
    for q in xq:
        t0 = time.perf_counter_ns()
        vm.search_vector(q, 5, tenant=TENANT)
        wall.append((time.perf_counter_ns() - t0) / 1e6)
    out["search_vector"] = {"ef_search": spec["ef"], "p50_ms": float(np.percentile(wall, 50)),
                            "p95_ms": float(np.percentile(wall, 95))}
    out["rss_memory_searched"] = rss()
    for text in TEXT_QUERIES * 4:
        vm.search(text, 5, tenant=TENANT)
    out["rss_text_searched"] = rss()
    out["load_avg"] = os.getloadavg()
    vm.store.close()
    return out


def run_child(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    spec_path, result_path = work / "spec.json", work / "child.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", str(spec_path), str(result_path)], env=env,
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the searching process failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(result_path.read_text())


# --- the run --------------------------------------------------------------------------------
def measure_size(size: int, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    reuse = args.reuse
    if reuse is None:
        xb, xq, data = vectors(size, args.quick, args.cache, args.queries)
        gt = ground_truth(xb, xq)
        db_path = work / f"memory-{size}.db"
        ids, fill_s = fill(f"sqlite:///{db_path}", work / "fill", xb)
        np.save(work / "queries.npy", xq)
        np.save(work / "truth.npy", ids[gt])  # exact top-K as experience ids
        del xb
        data_dir: Path = work
    else:  # a database a previous run left (with its queries and their exact answers): build and search again
        data_dir, db_path = reuse, reuse / f"memory-{size}.db"
        previous = json.loads((reuse / "data.json").read_text())
        data, fill_s = previous["data"], previous["fill_s"]
    (data_dir / "data.json").write_text(json.dumps({"data": data, "fill_s": fill_s}))
    db_url = f"sqlite:///{db_path}"
    sql_bytes = db_path.stat().st_size
    rows = []
    for kind in args.kinds.split(","):
        home = work / f"home-{size}-{kind}"
        built = build(db_url, home, kind, args.ef, args.sq8_m)
        logger.info("built %s at %d: %s", kind, size, built)
        searched = run_child({"home": str(home), "db_url": db_url, "kind": kind, "ef": args.ef, "sq8_m": args.sq8_m,
                              "ef_sweep": args.ef_sweep, "queries": str(data_dir / "queries.npy"),
                              "truth": str(data_dir / "truth.npy")}, work)
        logger.info("searched %s at %d: %s", kind, size, searched)
        rows.append({"size": size, "data": data, "fill_s": fill_s, "sql_file_bytes": sql_bytes,
                     "sql_bytes_per_experience": sql_bytes / size, **built,
                     "sq8_m": args.sq8_m if built["resolved_kind"] == "hnsw_sq8" else None,
                     "index_file_bytes_per_vector": built["index_file_bytes"] / size, "search": searched})
        if args.keep is not None:  # the memory as built, for --remeasure
            keep = args.keep / kind
            keep.mkdir(parents=True, exist_ok=True)
            for name in (db_path.name, "queries.npy", "truth.npy", "data.json"):
                if not (keep / name).exists():
                    os.link(data_dir / name, keep / name)
            os.rename(home, keep / home.name)
        else:
            for p in home.glob("index/*"):
                p.unlink()
    if reuse is None:
        db_path.unlink()
    return rows


def remeasure(result: dict[str, Any], keep: Path, args: argparse.Namespace) -> None:
    """Run the searching process again on memories a run left in `keep` (`<keep>/<kind>/` holding the database,
    the home and the queries of that kind's row), replacing the measurements of the rows of --kinds (hnsw_sq8's
    of degree --sq8-m); the build is not redone."""
    for row in result["rows"]:
        if row["kind"] not in args.kinds.split(",") or (row["resolved_kind"] == "hnsw_sq8"
                                                         and (row.get("sq8_m") or 16) != args.sq8_m):
            continue
        work = keep / row["kind"]
        home, db = work / f"home-{row['size']}-{row['kind']}", work / f"memory-{row['size']}.db"
        if not (home.is_dir() and db.is_file()):
            continue
        logger.info("measuring %s at %d again", row["kind"], row["size"])
        row["search"] = run_child({"home": str(home), "db_url": f"sqlite:///{db}", "kind": row["kind"],
                                   "ef": args.ef, "ef_sweep": args.ef_sweep, "sq8_m": args.sq8_m,
                                   "queries": str(work / "queries.npy"),
                                   "truth": str(work / "truth.npy")}, work)
        row["remeasured"] = True


def label(row: dict[str, Any]) -> str:
    """The index kind of a row, with hnsw_sq8's graph degree (rows before it was recorded used 16)."""
    kind = row["resolved_kind"]
    return f"{kind} m={row.get('sq8_m') or 16}" if kind == "hnsw_sq8" else kind


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def best(row: dict[str, Any], target: float) -> dict[str, Any] | None:
    """The fastest sweep point with recall@10 >= target."""
    ok = [s for s in row["search"]["sweep"] if s["recall"] >= target]
    return min(ok, key=lambda s: s["p50_ms"]) if ok else None


def markdown(result: dict[str, Any], command: str) -> str:
    meta, rows = result["meta"], sorted(result["rows"], key=lambda r: r["size"])
    lines = ["# Footprint: bytes per experience, and the RSS of a process searching the memory", "",
             f"`{command}` on {meta['cpus']} cores ({meta['machine']}), faiss {meta['faiss']}; load average "
             f"{meta['load_avg_start'][0]:.1f} at start, {meta['load_avg_end'][0]:.1f} at end (other sessions' jobs "
             "share these cores: wall times are inflated by the load; the CPU-time column is less so).", "",
             f"SQLite, one tenant; each experience holds its 384-d float32 vector (1,536 bytes) and placeholder texts "
             f"of {TRIGGER_CHARS} + {RESPONSE_CHARS} characters, inserted through the store in transactions of "
             f"{FILL_BATCH:,} (rows, sources and change log). RSS is read from /proc/self/status of a fresh process "
             "that opens the memory (index loaded from its file, no rebuild), searches the index one query per call "
             f"({meta['queries']} held-out queries), then runs `VectorMemory.search_vector`, then a few text searches "
             "(ONNX embedder loaded).", "",
             "| memories | data | index kind | SQL bytes / experience | index file bytes / vector | build s (SQL read "
             "+ build) | RSS after load, MiB | RSS after index searches, MiB (anon / file) | RSS after search_vector, "
             "MiB | RSS with the embedder, MiB | peak RSS (VmHWM), MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["search"]
        kind = label(r) if r["kind"] == r["resolved_kind"] else f"{r['kind']} ({label(r)})"
        a = s["rss_index_searched"]
        lines.append(f"| {r['size']:,} | {r['data']} | {kind} | {r['sql_bytes_per_experience']:,.0f} | "
                     f"{r['index_file_bytes_per_vector']:,.0f} | {r['build_s']:.1f} | "
                     f"{mib(s['rss_loaded']['VmRSS'])} | "
                     f"{mib(a['VmRSS'])} ({mib(a['RssAnon'])} / {mib(a['RssFile'])}) | "
                     f"{mib(s['rss_memory_searched']['VmRSS'])} | {mib(s['rss_text_searched']['VmRSS'])} | "
                     f"{mib(s['rss_text_searched']['VmHWM'])} |")
    for extra in meta.get("appended", []):
        lines += ["", f"Rows added by `{extra['command']}` (load average {extra['load_avg_start'][0]:.1f} at start, "
                  f"{extra['load_avg_end'][0]:.1f} at end)."]
    if "remeasured" in meta:
        lines += ["", f"Rows marked * were searched again on the same memories (`{meta['remeasured']['command']}`, "
                  "the build not redone)."]
    lines += ["", "## Search in the same processes", "",
              "| memories | index kind | efSearch | index p50 / p95 ms | index CPU p50 ms | recall@10 | load average "
              "(1 min) after |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        load = r["search"].get("load_avg")
        for p in r["search"]["sweep"]:
            lines.append(f"| {r['size']:,} | {label(r)}{'*' if r.get('remeasured') else ''} | "
                         f"{p['ef_search']} | {p['p50_ms']:.3f} / {p['p95_ms']:.3f} | {p['cpu_p50_ms']:.3f} | "
                         f"{p['recall']:.3f} | {f'{load[0]:.1f}' if load else '-'} |")
    lines += ["", "| memories | index kind | `VectorMemory.search_vector` (k=5, fetch_k=32, efSearch) p50 / p95 ms | "
              "fastest efSearch with recall@10 >= 0.95: p50 ms, recall |", "|---|---|---|---|"]
    for r in rows:
        sv, b = r["search"]["search_vector"], best(r, 0.95)
        pick = f"{b['ef_search']}: {b['p50_ms']:.3f}, {b['recall']:.3f}" if b else "none"
        lines.append(f"| {r['size']:,} | {label(r)} | {sv['p50_ms']:.2f} / {sv['p95_ms']:.2f} "
                     f"(ef {sv['ef_search']}) | {pick} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from common import save_figure

    rows = sorted(result["rows"], key=lambda r: r["size"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [f"{r['size']:,}\n{label(r)}".replace(" m=", "\nm=") for r in rows]
    x = np.arange(len(rows))
    anon = [r["search"]["rss_memory_searched"]["RssAnon"] / 2**20 for r in rows]
    file = [r["search"]["rss_memory_searched"]["RssFile"] / 2**20 for r in rows]
    ax1.bar(x, anon, label="RSS anon (after search_vector)")
    ax1.bar(x, file, bottom=anon, label="RSS file-backed")
    ax1.plot(x, [r["search"]["rss_text_searched"]["VmRSS"] / 2**20 for r in rows], "k_", markersize=22, mew=2,
             label="RSS once the ONNX embedder is loaded")
    ax1.axhline(1024, color="red", ls="--", lw=1, label="1 GiB")
    ax1.set_ylim(0, 1.5 * max(r["search"]["rss_text_searched"]["VmRSS"] / 2**20 for r in rows))  # room for the legend
    ax1.set_xticks(x, labels, fontsize=8)
    ax1.set_ylabel("MiB")
    ax1.set_title("RSS of the searching process")
    for r in rows:
        pts = r["search"]["sweep"]
        ax2.plot([p["p50_ms"] for p in pts], [p["recall"] for p in pts], "o-",
                 label=f"{label(r)} {r['size']:,}")
    ax2.axhline(0.95, color="grey", ls=":", lw=1, label="recall 0.95")
    ax2.axvline(1.0, color="grey", ls="--", lw=1, label="1 ms")
    ax2.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    ax2.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax2.xaxis.set_minor_formatter(NullFormatter())
    ax2.set_xlabel("index search p50, ms (one query per call; efSearch sweep)")
    ax2.set_ylabel("recall@10 vs exact")
    ax2.set_title("Recall and latency in the same process")
    save_figure(fig, [ax1, ax2], path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s child %(message)s")
        Path(argv[2]).write_text(json.dumps(child(json.loads(Path(argv[1]).read_text()))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--sizes", default=None, help="comma-separated memory sizes (default 100000,1000000)")
    p.add_argument("--kinds", default="hnsw,hnsw_sq8",
                   help="index kinds (auto: what a default memory uses: flat, hnsw past 50k, hnsw_sq8 past 500k)")
    p.add_argument("--ef", type=int, default=None, help="MemoryConfig.hnsw_ef_search for the memory searches")
    p.add_argument("--ef-sweep", default="64,128,256,384", help="efSearch values for the index searches")
    p.add_argument("--queries", type=int, default=None, help="held-out real turns used as queries")
    p.add_argument("--cache", type=Path, default=Path(__file__).parent / "results" / "cache",
                   help="where bench_retrieval's embedded turns are cached (git-ignored)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="5,000 seeded clustered vectors, 100 queries")
    p.add_argument("--sq8-m", type=int, default=None, help="MemoryConfig.hnsw_sq8_m (graph degree of hnsw_sq8)")
    p.add_argument("--keep", type=Path, default=None, help="keep each kind's memory here (<kind>/) for --remeasure")
    p.add_argument("--reuse", type=Path, default=None,
                   help="build and search the database a --keep run left there (one size) instead of filling one")
    p.add_argument("--append", action="store_true", help="add the rows to --out's results instead of replacing them")
    p.add_argument("--remeasure", type=Path, default=None,
                   help="a folder of memories a run left (<kind>/ each): search them again, update --out's results")
    args = p.parse_args(argv)
    from logmem.memory import MemoryConfig
    from logmem.memory.indexes import ef_search_for

    args.sizes = args.sizes or ("5000" if args.quick else "100000,1000000")
    args.queries = args.queries or (100 if args.quick else 500)
    args.ef = args.ef or ef_search_for(1_000_000, MemoryConfig())  # the 1M beam, as the results were measured
    args.sq8_m = args.sq8_m or MemoryConfig().hnsw_sq8_m
    args.ef_sweep = [int(e) for e in args.ef_sweep.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import faiss
    from logmem.model.embedding import default_embedder

    default_embedder().encode(["warm up"])  # the ONNX export cached before any searching process needs it
    stem = "footprint_quick" if args.quick else "footprint"
    command = "python benchmarks/bench_footprint.py " + " ".join(argv)
    if args.remeasure is not None:
        result = json.loads((args.out / f"{stem}.json").read_text())
        remeasure(result, args.remeasure, args)
        result["meta"]["remeasured"] = {"command": command, "load_avg": os.getloadavg()}
        write(result, args.out, stem, result["meta"].get("command", command))
        return 0
    load_start, t0 = os.getloadavg(), time.perf_counter()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-footprint-", dir=args.work) as tmp:
            rows += measure_size(size, args, Path(tmp))
    meta = {"command": command, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "faiss": faiss.__version__, "queries": args.queries, "k": K,
            "ef_search": args.ef, "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
            "seconds": time.perf_counter() - t0, "trigger_chars": TRIGGER_CHARS, "response_chars": RESPONSE_CHARS}
    result = {"meta": meta, "rows": rows}
    if args.append:
        result = json.loads((args.out / f"{stem}.json").read_text())
        result["rows"] += rows
        result["meta"].setdefault("appended", []).append(meta | {"command": command})
        command = result["meta"].get("command", command)
    write(result, args.out, stem, command)
    return 0


def write(result: dict[str, Any], out: Path, stem: str, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(markdown(result, command))
    plot(result, out / f"{stem}.png")
    logger.info("wrote %s", out / f"{stem}.md")


if __name__ == "__main__":
    raise SystemExit(main())
