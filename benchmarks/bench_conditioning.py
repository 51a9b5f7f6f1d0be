"""What memory costs an answer: the same request answered with and without memory, 32 tokens each.

    python benchmarks/bench_conditioning.py --logs data/nfcats/logs.jsonl \\
        --eval data/nfcats/test.eval.jsonl --out benchmarks/results
    python benchmarks/bench_conditioning.py ... --quick   # CI sizes: a few requests, fewer tokens

A memory is made from `--logs`; each of the first `--n` requests of `--eval` is answered by the bundled model
through `MemoryGenerator.chat` twice, in alternating order: with memory (k experiences retrieved and put in
the prompt, free generation) and without (k = 0: the same generator, nothing retrieved, nothing added).
Both generate exactly `--tokens` tokens greedily (`min_new_tokens` = `max_new_tokens`), so the answers cost
the same to decode and what differs is what memory adds: retrieval (embedding + search), prompt assembly
(selection, templating, tokenisation) and the longer prompt's prefill. The overhead is the paired difference
of the wall times, p50 over requests, as a share of the answer without memory, split by those stages.
torch and the embedder each run on `--threads` threads. Writes conditioning.json, .md and .png to `--out`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import save_figure, sized  # noqa: E402
from tqdm import tqdm  # noqa: E402

logger = logging.getLogger("bench_conditioning")
FULL = {"n": 24, "tokens": 32, "logs_max": 0}
QUICK = {"n": 3, "tokens": 8, "logs_max": 60}


def answer(generator: Any, messages: list[dict[str, str]], tokens: int) -> dict[str, float]:
    start = time.perf_counter()
    reply = generator.chat(messages, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, log=False)
    wall = (time.perf_counter() - start) * 1e3
    if reply.completion_tokens != tokens:
        raise RuntimeError(f"asked for exactly {tokens} tokens, the model gave {reply.completion_tokens}")
    return {"wall_ms": wall, "retrieval_ms": reply.retrieval_ms, "prompt_ms": reply.prompt_ms,
            "model_ms": reply.model_ms, "prompt_tokens": reply.prompt_tokens,
            "experiences": len(reply.experiences)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from logmem.memory import VectorMemory
    from logmem.model.config import GeneratorConfig
    from logmem.model.embedding import default_embedder
    from logmem.model.evaluate import read_eval
    from logmem.model.generator import MemoryGenerator
    from logmem.model.loading import load_generator

    torch.set_num_threads(args.threads)
    model, tokenizer = load_generator(args.model, home=Path(args.model_home))
    items = read_eval(args.eval)[:args.n]
    lines = [json.loads(line) for line in Path(args.logs).read_text(encoding="utf-8").splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as home, \
            VectorMemory(home, embedder=default_embedder(threads=args.threads, query_cache=0)) as memory:
        memory.ingest(lines[:args.logs_max or None])
        # every answer generated (reuse off: a reused answer runs no model), so both sides decode the same tokens
        with_memory = MemoryGenerator(model, tokenizer, memory, config=GeneratorConfig(choose="off", reuse=False))
        without = MemoryGenerator(model, tokenizer, memory, config=GeneratorConfig(choose="off", k=0, reuse=False))
        for generator in (with_memory, without):  # warm: first-call setup is not what a request waits for
            answer(generator, items[0].messages, args.tokens)
        pairs = []
        for i, item in enumerate(tqdm(items, desc="requests", unit="req")):
            order = [("with", with_memory), ("without", without)]
            got = dict((name, answer(g, item.messages, args.tokens)) for name, g in (order if i % 2 else order[::-1]))
            if got["with"]["experiences"] == 0:
                logger.warning("request %d found no experience: its pair measures nothing", i)
            pairs.append(got)
        stats = memory.stats().experiences
    return {"pairs": pairs, "experiences": stats}


def summarize(pairs: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    def p50(values: list[float]) -> float:
        return float(np.percentile(values, 50))

    w, wo = [p["with"] for p in pairs], [p["without"] for p in pairs]
    base = p50([r["wall_ms"] for r in wo])
    out = {"without_ms": base, "with_ms": p50([r["wall_ms"] for r in w]),
           "overhead_ms": p50([a["wall_ms"] - b["wall_ms"] for a, b in zip(w, wo)]),
           "retrieval_ms": p50([r["retrieval_ms"] for r in w]),
           "prompt_ms": p50([a["prompt_ms"] - b["prompt_ms"] for a, b in zip(w, wo)]),
           "prefill_ms": p50([a["model_ms"] - b["model_ms"] for a, b in zip(w, wo)]),
           "prompt_tokens_with": p50([r["prompt_tokens"] for r in w]),
           "prompt_tokens_without": p50([r["prompt_tokens"] for r in wo]),
           "experiences": p50([r["experiences"] for r in w])}
    out["overhead_share"] = out["overhead_ms"] / base
    return out


def markdown(result: dict[str, Any]) -> str:
    s, a = result["summary"], result["args"]
    return "\n".join([
        f"# What memory costs an answer ({a['tokens']}-token greedy answers)", "",
        f"{len(result['pairs'])} requests of {a['eval']}, each answered with and without memory (alternating "
        f"order) by the bundled model on {a['threads']} thread(s), from a memory of {result['experiences']} "
        f"experiences; {result['environment']['cores']} cores, load average {result['load_avg_start']:.2f} at "
        f"start, {result['load_avg_end']:.2f} at end{result['mode']}.", "",
        "| | p50 |", "|---|---|",
        f"| answer without memory | {s['without_ms']:.0f} ms ({s['prompt_tokens_without']:.0f} prompt tokens) |",
        f"| answer with memory | {s['with_ms']:.0f} ms ({s['prompt_tokens_with']:.0f} prompt tokens, "
        f"{s['experiences']:.0f} experiences) |",
        f"| **overhead (paired difference)** | **{s['overhead_ms']:.0f} ms = {s['overhead_share']:.1%}** |",
        f"| of which retrieval (embed + search) | {s['retrieval_ms']:.1f} ms |",
        f"| of which prompt assembly | {s['prompt_ms']:.1f} ms |",
        f"| of which the longer prompt's prefill (model time difference) | {s['prefill_ms']:.0f} ms |", ""])


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    left = 0.0
    for label, value in (("answer without memory", s["without_ms"]), ("retrieval", s["retrieval_ms"]),
                         ("prompt assembly", max(s["prompt_ms"], 0.0)), ("longer prefill", max(s["prefill_ms"], 0.0))):
        ax.barh([0], [value], left=left, label=f"{label} ({value:.0f} ms)")
        left += value
    ax.set(yticks=[], xlabel="ms (p50)",
           title=f"{result['args']['tokens']}-token answer: memory adds {s['overhead_share']:.1%}")
    save_figure(fig, [ax], path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", default="data/nfcats/logs.jsonl",
                   help="native-schema JSONL the memory is made from (default: %(default)s)")
    p.add_argument("--eval", default="data/nfcats/test.eval.jsonl",
                   help="eval JSONL ({messages, reference}): the requests (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--quick", action="store_true", help=f"CI sizes: {QUICK}")
    p.add_argument("--n", type=int, help=f"requests, default {FULL['n']}")
    p.add_argument("--tokens", type=int, help=f"tokens per answer, default {FULL['tokens']}")
    p.add_argument("--logs-max", type=int, help="at most this many records of --logs (0: all)")
    p.add_argument("--threads", type=int, default=1, help="torch and embedder threads")
    p.add_argument("--model", help="a model folder (default: the bundled model, converted into --model-home)")
    p.add_argument("--model-home", default=os.environ.get("LOGMEM_MODEL_CACHE", ".logmem"),
                   help="where the converted bundled model is cached")
    args = sized(p.parse_args(argv), FULL, QUICK)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    result = run(args)
    result.update({"summary": summarize(result["pairs"]), "args": vars(args), "load_avg_start": load_start,
                   "load_avg_end": os.getloadavg()[0], "mode": " (--quick)" if args.quick else "",
                   "environment": {"python": platform.python_version(), "cores": os.cpu_count()}})
    (out / "conditioning.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (out / "conditioning.md").write_text(text)
    plot(out / "conditioning.png", result)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
