"""Does the served answer say what memory found? Free-text facts taught once in logs, asked in other words.

    python benchmarks/make_freetext.py --out data/freetext        # the development set (seed 0), if not there
    python benchmarks/bench_freetext.py --logs data/freetext/logs.jsonl --eval data/freetext/dev.eval.jsonl
    python benchmarks/bench_freetext.py ... --quick                 # CI sizes: a few questions, two options

A memory is made from `--logs` (facts no model knows, each taught once: by a liked answer or by a correction); each
question of `--eval` (a fact asked in words the logs never used) is answered by the bundled model through
`MemoryGenerator.chat_many` with nothing logged, once per option: the conditioning before this benchmark (every hit
that fits the budgets), the prompt kept to the hits within a score margin of the best (`focus_margin`: 0 is the
best hit alone), and the reuse of a trusted experience's answer (`reuse`, its threshold calibrated per tenant on
held-out experiences), and where the kept answers are stated (`fact_place`: after the question, or in the system
note). The default option is `GeneratorConfig()` as shipped, the tenant's serving mode resolved as
for a request that names none.

Figures per option: the share of answers that contain the taught value (`contains_reference`), overall, by how the
fact was taught (a like or a correction), and over the questions whose right experience the memory retrieved
first; beside them, retrieval's own figures (right experience first, among the k). Writes freetext.json, .md and
.png to `--out`, with the load average at start and end (the answers are greedy: the figures do not depend on it,
the seconds do).
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

from common import save_figure, sized  # noqa: E402
from tqdm import tqdm  # noqa: E402

logger = logging.getLogger("bench_freetext")
FULL = {"n": 0, "options": "before,margin0.1,margin0.1+system-note,margin0.1+note,reuse,default+system-note,"
                           "default+margin0.05,default"}
QUICK = {"n": 8, "options": "before,default"}
RISKS = [0.0, 0.02, 0.05, 0.1, 0.2]  # reuse_risk values whose calibrated rule is measured on the questions
# option -> GeneratorConfig fields (what differs from the shipped default)
OPTIONS: dict[str, dict[str, Any]] = {
    "before": {"focus_margin": None, "fact_note": False, "reuse": False},  # every hit that fits (before issue 32)
    "top": {"focus_margin": 0.0, "fact_note": False, "reuse": False},  # the best hit alone
    "margin0.05": {"focus_margin": 0.05, "fact_note": False, "reuse": False},  # the hits near the best
    "margin0.1": {"focus_margin": 0.1, "fact_note": False, "reuse": False},
    "margin0.15": {"focus_margin": 0.15, "fact_note": False, "reuse": False},
    "margin0.1+note": {"focus_margin": 0.1, "fact_note": True, "reuse": False},  # their answers after the question
    "margin0.1+system-note": {"focus_margin": 0.1, "fact_note": True, "fact_place": "system", "reuse": False},
    "default+system-note": {"fact_place": "system"},  # the default before the note followed the question
    "default+margin0.05": {"focus_margin": 0.05},
    "reuse": {"focus_margin": None, "fact_note": False, "reuse": True},  # reuse where calibrated, else every hit
    "default+risk0.1": {"reuse_risk": 0.1},  # the default with a looser reuse margin
    "default": {},  # GeneratorConfig() as shipped
}


def read_items(path: str, n: int) -> list[dict[str, Any]]:
    """`n` questions of `path` spread evenly over it (0: all), so that a smaller run still asks of every kind."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows if not n or n >= len(rows) else [rows[i * len(rows) // n] for i in range(n)]


def retrieval(memory: Any, items: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Where each question's right experience (the one whose answer holds the value) is among its k hits."""
    from logmem.model.scoring import contains_reference

    out = []
    for item in items:
        hits = memory.search(item["messages"][-1]["content"], k)
        ranked = sorted(range(len(hits)), key=lambda i: -hits[i].score)
        right = [r for r, i in enumerate(ranked) if contains_reference(hits[i].response, [item["reference"]])]
        out.append({"first": bool(right) and right[0] == 0, "in_k": bool(right)})
    return out


def reuse_curve(memory: Any, items: list[dict[str, Any]], risks: list[float]) -> list[dict[str, Any]]:
    """For each `reuse_risk`: the margin calibrated on the held-out experiences, and on the questions the share the
    rule answers by reuse and the share of those that hold the right value (no model: retrieval alone)."""
    from logmem.model.config import GeneratorConfig
    from logmem.model.reuse import calibrate
    from logmem.model.scoring import contains_reference

    rows = []
    for risk in risks:
        config = GeneratorConfig(reuse_risk=risk)
        rule = calibrate(memory, "default", config)
        picked = [(rule.pick(memory.search(it["messages"][-1]["content"], config.k)), it) for it in items]
        fired = [contains_reference(h.response, [it["reference"]]) for h, it in picked if h is not None]
        rows.append({"risk": risk, **rule.to_json(), "questions_reused": len(fired) / max(len(items), 1),
                     "questions_precision": sum(fired) / len(fired) if fired else None})
    return rows


def answer(generator: Any, items: list[dict[str, Any]], batch: int, tokens: int) -> list[dict[str, Any]]:
    rows = []
    for start in tqdm(range(0, len(items), batch), desc="answers", unit="batch", leave=False):
        chunk = items[start:start + batch]
        for reply in generator.chat_many([it["messages"] for it in chunk], max_new_tokens=tokens, log=False):
            rows.append({"text": reply.text, "chosen_by": reply.chosen_by, "exchanges": len(reply.experiences),
                         "prompt_tokens": reply.prompt_tokens})
    return rows


def figures(items: list[dict[str, Any]], found: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    from logmem.model.scoring import contains_reference

    hit = [contains_reference(r["text"], [it["reference"]]) for it, r in zip(items, rows)]

    def share(flags: list[bool]) -> float | None:
        return sum(flags) / len(flags) if flags else None

    def where(cond: Any) -> list[bool]:
        return [h for h, it, f in zip(hit, items, found) if cond(it, f)]

    return {"n": len(items), "contains": share(hit),
            "contains_like": share(where(lambda it, f: it["taught"] == "like")),
            "contains_correction": share(where(lambda it, f: it["taught"] == "correction")),
            "contains_right_first": share(where(lambda it, f: f["first"])),
            "n_right_first": sum(f["first"] for f in found),
            "reused": share([r["chosen_by"] == "reuse" for r in rows]),
            "exchanges": share([r["exchanges"] for r in rows]),  # mean exchanges in the prompt
            "prompt_tokens": share([r["prompt_tokens"] for r in rows])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from logmem.memory import VectorMemory
    from logmem.model.config import GeneratorConfig
    from logmem.model.embedding import default_embedder
    from logmem.model.generator import MemoryGenerator
    from logmem.model.loading import load_generator

    torch.set_num_threads(args.threads)
    model, tokenizer = load_generator(args.model, home=Path(args.model_home), dtype="float32")
    items = read_items(args.eval, args.n)
    lines = [json.loads(line) for line in Path(args.logs).read_text(encoding="utf-8").splitlines() if line.strip()]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as home, \
            VectorMemory(home, embedder=default_embedder(threads=args.threads)) as memory:
        ingest = memory.ingest(lines).to_json()
        k = GeneratorConfig().k
        found = retrieval(memory, items, k)
        for taught in ("like", "correction"):
            mine = [f for f, it in zip(found, items) if it["taught"] == taught]
            results[f"retrieval_{taught}"] = {"first": sum(f["first"] for f in mine) / max(len(mine), 1),
                                              "in_k": sum(f["in_k"] for f in mine) / max(len(mine), 1)}
        results["reuse_curve"] = reuse_curve(memory, items, RISKS)
        options, answers = {}, {}
        for name in args.options.split(","):
            generator = MemoryGenerator(model, tokenizer, memory, config=GeneratorConfig(**OPTIONS[name]))
            started = time.perf_counter()
            rows = answer(generator, items, args.batch_size, args.tokens)
            options[name] = {**figures(items, found, rows), "config": OPTIONS[name],
                             "seconds": time.perf_counter() - started}
            if generator.gen_config.reuse:  # what its calibration measured on the held-out experiences
                options[name]["reuse_rule"] = generator.reuse_rule().to_json()
            answers[name] = [r["text"] for r in rows]
            logger.warning("%s: %s", name, {k: v for k, v in options[name].items() if k != "config"})
            (Path(args.out) / f"{args.name}.partial.json").write_text(json.dumps({"options": options,
                                                                                 "answers": answers}, indent=1))
        results.update(ingest=ingest, options=options, answers=answers,
                       defaults={k: v for k, v in vars(GeneratorConfig()).items()})
    return results


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(result: dict[str, Any]) -> str:
    a, rl, rc = result["args"], result["retrieval_like"], result["retrieval_correction"]
    lines = [
        "# Free-text answers that say what memory found", "",
        f"{result['options'][next(iter(result['options']))]['n']} questions of {a['eval']} (each fact taught once "
        f"in {a['logs']}, by a like or a correction, asked in other words), answered greedily ({a['tokens']} new "
        f"tokens at most) by the bundled model (float32; generation on `GeneratorConfig.threads`, the embedder on "
        f"{a['threads']} thread(s)); {result['environment']['cores']} cores, load average "
        f"{result['load_avg_start']:.2f} at start, {result['load_avg_end']:.2f} at end"
        f"{result['mode']}.", "",
        f"Retrieval (k = {result['defaults']['k']}): right experience first {rl['first']:.2f} (likes) / "
        f"{rc['first']:.2f} (corrections); among the k {rl['in_k']:.2f} / {rc['in_k']:.2f}.", "",
        "| option | contains (all) | taught by a like | taught by a correction | given right first | reused | "
        "exchanges in prompt | prompt tokens | seconds |",
        "|---|---|---|---|---|---|---|---|---|"]
    for name, o in result["options"].items():
        label = f"**{name}**" if name == "default" else name
        lines.append(f"| {label} `{json.dumps(o['config'])}` | {pct(o['contains'])} | {pct(o['contains_like'])} | "
                     f"{pct(o['contains_correction'])} | {pct(o['contains_right_first'])} "
                     f"(n={o['n_right_first']}) | {pct(o['reused'])} | {o['exchanges']:.1f} | "
                     f"{o['prompt_tokens']:.0f} | {o['seconds']:.0f} |")
    lines += ["", "Reuse alone, by `reuse_risk` (the margin calibrated on the held-out experiences, each searched with "
              "itself left out; on the questions, the share answered by reuse and how many of those hold the right "
              "value; no model):", "",
              "| reuse_risk | margin | held-out reused (wrong) | questions reused | their precision |",
              "|---|---|---|---|---|"]
    for r in result["reuse_curve"]:
        lines.append(f"| {r['risk']} | {r['margin']:.3f} | {r['reused']} ({r['wrong']}) of {r['held_out']} | "
                     f"{r['questions_reused']:.2f} | {pct(r['questions_precision'])} |")
    return "\n".join(lines + [""])


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["options"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.2
    for j, (key, label) in enumerate((("contains", "all"), ("contains_like", "taught by a like"),
                                      ("contains_correction", "taught by a correction"),
                                      ("contains_right_first", "given right first"))):
        ax.bar([i + (j - 1.5) * width for i in range(len(names))],
               [result["options"][n][key] or 0.0 for n in names], width, label=label)
    ax.axhline(0.85, color="grey", ls="--", lw=1)
    ax.set(xticks=range(len(names)), xticklabels=names, ylim=(0, 1), ylabel="answers containing the fact")
    save_figure(fig, [ax], path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", default="data/freetext/logs.jsonl")
    p.add_argument("--eval", default="data/freetext/dev.eval.jsonl")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="freetext", help="file stem of the results (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help=f"CI sizes: {QUICK}")
    p.add_argument("--n", type=int, help="questions (0: all)")
    p.add_argument("--options", help=f"comma list of {', '.join(OPTIONS)}")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per answer at most")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch and embedder threads")
    p.add_argument("--model", help="a model folder (default: the bundled model, converted into --model-home)")
    p.add_argument("--model-home", default=os.environ.get("LOGMEM_MODEL_CACHE", ".logmem"),
                   help="where the converted bundled model is cached")
    args = sized(p.parse_args(argv), FULL, QUICK)
    if unknown := set(args.options.split(",")) - set(OPTIONS):
        p.error(f"unknown options {sorted(unknown)}; known: {', '.join(OPTIONS)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    result = run(args)
    result.update({"args": vars(args), "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0],
                   "mode": " (--quick)" if args.quick else "",
                   "environment": {"python": platform.python_version(), "cores": os.cpu_count()}})
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (out / f"{args.name}.md").write_text(text)
    plot(out / f"{args.name}.png", result)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
