"""Does memory make the model answer better? Accuracy of base / memory / vote modes and the kNN reference.

    python benchmarks/bench_quality.py --logs data/nfcats/logs.jsonl \
        --eval data/nfcats/test.eval.jsonl --out benchmarks/results

Writes `quality_<eval name>.json` and `.md`: accuracy per mode, per-query time in retrieval, prompt
assembly and the model, and retrieval + prompt time as a share of a 32-token greedy answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from logmem.memory import VectorMemory  # noqa: E402
from logmem.model.config import GeneratorConfig  # noqa: E402
from logmem.model.embedding import default_embedder  # noqa: E402
from logmem.model.evaluate import eval_report, markdown_table, read_eval  # noqa: E402
from logmem.model.loading import load_generator  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", default="data/nfcats/logs.jsonl", help="native-schema JSONL (default: %(default)s)")
    p.add_argument("--eval", default="data/nfcats/test.eval.jsonl", help="eval JSONL (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--modes", default="knn,base,memory,vote",
                   help="comma list of base, memory, vote, auto, knn (and default: what the tenant is served)")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--home", default=None, help="memory home (default: a fresh temporary folder)")
    p.add_argument("--model-home", default=os.environ.get("LOGMEM_MODEL_CACHE", ".logmem"),
                   help="where the converted generator is cached")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("-k", type=int, default=GeneratorConfig().k)
    p.add_argument("--template", default=GeneratorConfig().template)
    p.add_argument("--vote-prior", type=float, default=GeneratorConfig().vote_prior)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--order", default=GeneratorConfig().order, choices=["score", "answer"],
                   help="exchanges best last (score) or grouped by answer, the best-supported answer last")
    p.add_argument("--answer-note", action=argparse.BooleanOptionalAction, default=GeneratorConfig().answer_note,
                   help="tell the model how often each answer was given")
    p.add_argument("--constrain", action=argparse.BooleanOptionalAction, default=GeneratorConfig().constrain,
                   help="memory mode: keep free generation to the answers the retrieved experiences gave")
    p.add_argument("--lesson-token-budget", type=int, default=GeneratorConfig().lesson_token_budget,
                   help="prompt tokens for lessons from corrections (0: no lessons note)")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=GeneratorConfig().calibrate,
                   help="with --constrain: the model's own running preference per answer taken off its scores")
    p.add_argument("--calibrate-warmup", type=int, default=GeneratorConfig().calibrate_warmup,
                   help="with --calibrate: stored experiences the preference is measured on before the first answer")
    p.add_argument("--offset", type=int, default=0, help="skip the first N items (with --limit: a slice)")
    p.add_argument("--stem", default=None, help="result file stem (default quality_<eval name>)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(args.eval).name.split(".")[0]
    items = read_eval(args.eval)[args.offset:][: args.limit or None]
    model, tokenizer = load_generator(home=Path(args.model_home), dtype=args.dtype)
    config = GeneratorConfig(k=args.k, template=args.template, vote_prior=args.vote_prior, order=args.order,
                             answer_note=args.answer_note, constrain=args.constrain,
                             lesson_token_budget=args.lesson_token_budget, calibrate=args.calibrate,
                             calibrate_warmup=args.calibrate_warmup)
    stem = args.stem or f"quality_{name}"
    with tempfile.TemporaryDirectory() as tmp, \
            VectorMemory(args.home or tmp, embedder=default_embedder()) as memory:
        results, data = eval_report(model, tokenizer, memory, args.logs, items, modes=args.modes.split(","),
                                    config=config, max_new_tokens=args.max_new_tokens,
                                    predictions=out / f"{stem}.predictions.jsonl", progress=True)
    data.update({"eval": args.eval, "logs": args.logs, "n": len(items), "offset": args.offset, "dtype": args.dtype,
                 "machine": f"{platform.machine()}, {os.cpu_count()} cpu", "load_average": os.getloadavg()})
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2))
    table = markdown_table(results, data["greedy_32_tokens_ms"])
    (out / f"{stem}.md").write_text(f"# Quality on {args.eval} ({len(items)} items from {args.offset})\n\n"
                                    f"{table}\n\nGenerator: k={config.k}, order={config.order}, "
                                    f"answer_note={config.answer_note}, constrain={config.constrain}, "
                                    f"calibrate={config.calibrate} (warm-up {config.calibrate_warmup}), "
                                    f"lesson_token_budget={config.lesson_token_budget}, "
                                    f"dtype {args.dtype}. Load average {os.getloadavg()[0]:.1f} on "
                                    f"{os.cpu_count()} cores.\n")
    print(table)


if __name__ == "__main__":
    main()
