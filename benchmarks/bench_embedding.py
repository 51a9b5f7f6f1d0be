"""How fast is the embedder where users feel it? MiniLM under torch vs the same weights under onnxruntime.

    python benchmarks/bench_embedding.py data/nfcats/test.eval.jsonl data/nfcats/dev.eval.jsonl \
        --out benchmarks/results

Texts: the last user message of each eval item, without the instruction paragraph every item shares (what
the memory embeds; `--whole-message` keeps it), distinct texts in file order. Measures one text per call
(p50/p95 over `--n` texts, after a warm-up) for torch on 1 thread and ONNX on 1 and 2 threads; throughput
on `--batch` texts in one `encode` call (torch and ONNX, 1 and 2 threads, batch_size 64 and 8); the cold
ONNX export and the warm load; and how close the runtimes are (cosine per text, overlap of each text's
10 nearest neighbours among the batch texts). The machine is shared: the load average is recorded before and after.
Writes `embedding.json` and `embedding.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from logmem.memory.embedding import Embedder  # noqa: E402
from logmem.model.embedding import SentenceTransformerEmbedder  # noqa: E402
from logmem.model.evaluate import read_eval  # noqa: E402
from logmem.model.onnx_embedding import OnnxEmbedder  # noqa: E402

BATCH_SIZES = (64, 8)  # the default, and the best one measured for these short texts


def read_texts(paths: list[str], *, whole_message: bool) -> list[str]:
    """Distinct last user messages of the eval files, without a first paragraph that every one shares."""
    messages = []
    for path in paths:
        for item in read_eval(path):
            users = [m["content"] for m in item.messages if m.get("role") == "user"]
            if users:
                messages.append(users[-1])
    if not whole_message:
        heads = Counter(m.split("\n\n", 1)[0] for m in messages if "\n\n" in m)
        shared = {head for head, n in heads.items() if n == len(messages)}
        messages = [m.split("\n\n", 1)[1] if m.split("\n\n", 1)[0] in shared else m for m in messages]
    return list(dict.fromkeys(m for m in messages if m.strip()))


def single_text_ms(embedders: dict[str, Embedder], texts: list[str], *, warmup: int = 10) -> dict[str, dict]:
    """p50/p95/mean milliseconds of `encode([text])` per embedder, one text per call.

    The embedders take turns on each text, so a burst of load from another process hits them alike.
    """
    for text in texts[:warmup]:
        for embedder in embedders.values():
            embedder.encode([text])
    times: dict[str, list[float]] = {key: [] for key in embedders}
    for text in texts:
        for key, embedder in embedders.items():
            t0 = time.perf_counter()
            embedder.encode([text])
            times[key].append((time.perf_counter() - t0) * 1e3)
    return {key: {"p50_ms": float(np.percentile(ts, 50)), "p95_ms": float(np.percentile(ts, 95)),
                  "mean_ms": float(np.mean(ts))} for key, ts in times.items()}


def batch_rate(embedder: Embedder, texts: list[str], repeats: int) -> tuple[float, np.ndarray]:
    """Best texts/s over `repeats` calls of `encode(texts)`, and the vectors."""
    best, xb = 0.0, np.empty(0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        xb = embedder.encode(texts)
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return best, xb


def top_k(xb: np.ndarray, k: int = 10) -> np.ndarray:
    D = xb @ xb.T
    np.fill_diagonal(D, -np.inf)
    return np.argsort(-D, axis=1, kind="stable")[:, :k]


def torch_on(threads: int) -> SentenceTransformerEmbedder:
    torch.set_num_threads(threads)  # process-wide; set again before each torch row
    return SentenceTransformerEmbedder()


def measure(args: argparse.Namespace, texts: list[str], cache: Path) -> dict[str, object]:
    single, batch = texts[:args.n], texts[:args.batch]
    t0 = time.perf_counter()
    OnnxEmbedder(cache_dir=cache / "cold").encode(["export"])
    export_s = time.perf_counter() - t0
    onnx = {n: OnnxEmbedder(cache_dir=cache / "cold", threads=n) for n in (1, 2)}
    t0 = time.perf_counter()
    onnx[1].encode(["load"])
    load_s = time.perf_counter() - t0
    onnx[2].encode(["load"])
    reference = torch_on(1)
    t0 = time.perf_counter()
    reference.encode(["load"])
    torch_load_s = time.perf_counter() - t0

    torch.set_num_threads(1)
    latency = single_text_ms({"torch 1": reference, "onnx 1": onnx[1], "onnx 2": onnx[2]}, single)
    rows: list[dict[str, object]] = [{"runtime": key.split()[0], "threads": int(key.split()[1]), **ms}
                                     for key, ms in latency.items()]
    vectors = {}
    for runtime, n in (("torch", 1), ("torch", 2), ("onnx", 1), ("onnx", 2)):
        torch.set_num_threads(n)
        embedder = reference if runtime == "torch" else onnx[n]
        row = next((r for r in rows if r["runtime"] == runtime and r["threads"] == n), None)
        if row is None:
            rows.append(row := {"runtime": runtime, "threads": n})
        for size in BATCH_SIZES:
            embedder.batch_size = size
            row[f"texts_per_s_bs{size}"], vectors[runtime, n] = batch_rate(embedder, batch, args.repeats)
    torch.set_num_threads(1)
    want, got = vectors["torch", 1], vectors["onnx", 1]
    I_want, I_got = top_k(want), top_k(got)
    agreement = {"texts": len(batch), "min_cosine": float((want * got).sum(axis=1).min()),
                 "max_abs_diff": float(np.abs(want - got).max()),
                 "overlap_at_10": float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I_want, I_got)]))}
    return {"rows": rows, "agreement": agreement, "onnx_export_s": export_s, "onnx_load_s": load_s,
            "torch_load_s": torch_load_s}


def markdown(result: dict) -> str:
    def cell(row: dict, key: str, fmt: str) -> str:
        spec, _, unit = fmt.partition(" ")
        return f"{row[key]:{spec}}{' ' + unit if unit else ''}" if key in row else "-"

    lines = [f"# Embedding runtimes: all-MiniLM-L6-v2, torch vs onnxruntime fp32 ({result['machine']})", "",
             f"Texts: {result['texts']}. Load average before / after: {result['load_before']} / "
             f"{result['load_after']} (a shared machine: other runs inflate every figure, ONNX at 2 threads most).",
             "", "| runtime | threads | one text p50 | p95 | "
             + " | ".join(f"{result['batch']} texts, batch_size {b}: texts/s" for b in BATCH_SIZES) + " |",
             "|---|---|---|---|" + "---|" * len(BATCH_SIZES)]
    for row in result["rows"]:
        rates = " | ".join(cell(row, f"texts_per_s_bs{b}", ".0f") for b in BATCH_SIZES)
        lines.append(f"| {row['runtime']} | {row['threads']} | {cell(row, 'p50_ms', '.2f ms')} | "
                     f"{cell(row, 'p95_ms', '.2f ms')} | {rates} |")
    a = result["agreement"]
    lines += ["", f"Agreement on the {a['texts']} batch texts (ONNX 1 thread vs torch 1 thread): min cosine "
              f"{a['min_cosine']:.7f}, max |difference| {a['max_abs_diff']:.1e}, top-10 neighbour overlap "
              f"{a['overlap_at_10']:.3f}.", "",
              f"One-off costs: ONNX export {result['onnx_export_s']:.1f} s (first use of a weights file), "
              f"ONNX load from the cache {result['onnx_load_s']:.2f} s, torch load {result['torch_load_s']:.2f} s.",
              "", f"Versions: {result['versions']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval", nargs="*", default=["data/nfcats/test.eval.jsonl", "data/nfcats/dev.eval.jsonl"],
                   help="eval JSONL files (logmem.model.evaluate.read_eval format; default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--n", type=int, default=200, help="texts for the one-text-per-call latency")
    p.add_argument("--batch", type=int, default=512, help="texts in the throughput call")
    p.add_argument("--repeats", type=int, default=1, help="throughput calls per row (the best is kept)")
    p.add_argument("--whole-message", action="store_true", help="keep the shared instruction paragraph")
    args = p.parse_args()

    texts = read_texts(args.eval, whole_message=args.whole_message)
    if len(texts) < args.batch:
        raise SystemExit(f"need {args.batch} distinct texts, the files give {len(texts)}: pass more files")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as cache:
        measured = measure(args, texts, Path(cache))
    words = [len(t.split()) for t in texts[:args.batch]]
    result = {
        "texts": f"{', '.join(Path(e).parent.name + '/' + Path(e).name for e in args.eval)}, last user message"
                 f"{'' if args.whole_message else ' without the shared instruction'}; "
                 f"{args.n} for one-text calls, {args.batch} for the batch; median {np.median(words):.0f} words",
        "batch": args.batch, **measured,
        "load_before": " ".join(f"{x:.2f}" for x in load_before),
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu",
        "versions": ", ".join(f"{m} {version(m)}" for m in ("torch", "onnxruntime", "transformers", "numpy")),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "embedding.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out / "embedding.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
