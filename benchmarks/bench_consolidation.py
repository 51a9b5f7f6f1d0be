"""Does consolidation carry what the memory taught into the weights? Train, gate, then evaluate.

    python benchmarks/bench_consolidation.py --logs data/nfcats/logs.jsonl \
        --eval data/nfcats/test.eval.jsonl --method sft --epochs 1 --out benchmarks/results

Ingests the logs into a fresh home, runs one consolidation job (the same code as `logmem consolidate`),
and evaluates the modes `consolidated` (the adapter, no memory in the prompt) and `memory+adapter`.
`--dev` also scores the dev split (where the default method is chosen); `--drop-consolidated` adds
`memory+adapter` with the consolidated experiences out of retrieval (`MemoryConfig.retrieve_consolidated`).
Writes `consolidation_<method>_<eval name>.json` and `.md`, with the job's wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from logmem.api.jobs import JobRunner, consolidation_job  # noqa: E402
from logmem.memory import VectorMemory  # noqa: E402
from logmem.memory.store import JobData  # noqa: E402
from logmem.model.consolidate import ConsolidationConfig  # noqa: E402
from logmem.model.embedding import default_embedder  # noqa: E402
from logmem.model.evaluate import eval_report, markdown_table, read_eval  # noqa: E402
from logmem.model.loading import load_generator  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", default="data/nfcats/logs.jsonl", help="native-schema JSONL (default: %(default)s)")
    p.add_argument("--eval", default="data/nfcats/test.eval.jsonl", help="eval JSONL (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--method", default="sft", choices=["sft", "kd", "sft+kd"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--with-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="train the memory+adapter student (--no-with-memory: the bare one; default: the job chooses)")
    p.add_argument("--lr", type=float, default=0.0, help="AdamW learning rate (0: ConsolidationConfig's)")
    p.add_argument("--dpo-weight", type=float, default=0.0,
                   help="weight of a DPO term on corrected answers (0: off)")
    p.add_argument("--max-length", type=int, default=0,
                   help="tokens per training pair (0: ConsolidationConfig's; the runs before it was 1024 used 256)")
    p.add_argument("--modes", default="consolidated,memory+adapter")
    p.add_argument("--dev", default="", help="also score this eval file (the dev split) in --dev-modes")
    p.add_argument("--dev-modes", default="consolidated")
    p.add_argument("--drop-consolidated", action="store_true",
                   help="also run memory+adapter with the consolidated experiences out of retrieval")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="eval items per batched generation")
    p.add_argument("--home", default="", help="keep the memory and adapter here (default: a temporary folder); "
                   "a home that already holds a promoted adapter is evaluated without training again")
    p.add_argument("--model-home", default=os.environ.get("LOGMEM_MODEL_CACHE", ".logmem"))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="of the model in the eval (training is float32)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    name = Path(args.eval).name.split(".")[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = {"method": args.method, "epochs": args.epochs, "max_steps": args.max_steps,
              "with_memory": args.with_memory, **({"lr": args.lr} if args.lr else {}),
              **({"max_length": args.max_length} if args.max_length else {}),
              **({"dpo_weight": args.dpo_weight} if args.dpo_weight else {})}
    with contextlib.ExitStack() as stack:
        home = args.home or stack.enter_context(tempfile.TemporaryDirectory())
        memory = stack.enter_context(VectorMemory(home, embedder=default_embedder()))
        memory.ingest_file(args.logs, progress=True)
        model, tokenizer = load_generator(home=Path(args.model_home), dtype="float32")
        job, job_seconds = _trained(memory, model, tokenizer, params)
        data: dict = {"job": job.to_json(), "job_seconds": job_seconds, "params": params,
                      "consolidation_config": asdict(ConsolidationConfig(**params))}
        if job.status == "succeeded":
            table = _evaluate(args, memory, tokenizer, name, out, data)
        else:
            table = f"job {job.status}: {(job.metrics or {}).get('gate') or job.error}"
    student = {True: "_with_memory", False: "", None: "_chosen"}[args.with_memory]
    suffix = (f"{args.method.replace('+', '_')}{student}"
              f"{f'_lr{args.lr:g}' if args.lr else ''}{f'_dpo{args.dpo_weight:g}' if args.dpo_weight else ''}"
              f"{f'_cap{args.max_length}' if args.max_length else ''}"
              f"{'_drop' if args.drop_consolidated else ''}_{name}")
    (out / f"consolidation_{suffix}.json").write_text(json.dumps(data, indent=2, default=str))
    (out / f"consolidation_{suffix}.md").write_text(
        f"# Consolidation ({args.method}, {args.epochs} epoch(s)) on {args.eval}\n\n"
        f"Job {job.status} in {job_seconds / 60:.1f} min: {(job.metrics or {}).get('gate', job.error)}\n\n{table}\n")
    print(table)


def _trained(memory: VectorMemory, model: torch.nn.Module, tokenizer: Any, params: dict) -> tuple[JobData, float]:
    """The job that trained the active adapter with `params` (a kept home), or a new job run now."""
    runner = JobRunner(memory)
    active = memory.active_adapter("default")
    for job in runner.list("default"):
        same = all(job.params.get(k) == v for k, v in params.items())
        if active and job.status == "succeeded" and same and (job.metrics or {}).get("version") == active.version:
            logging.info("evaluating the adapter %s that job %d trained", active.version, job.id)
            return job, (job.finished_at or 0.0) - (job.started_at or 0.0)
    job_id = runner.submit("consolidate", "default", params)
    started = time.perf_counter()
    job = runner.run(job_id, consolidation_job(memory, model, tokenizer, tenant="default", params=params,
                                               base_model="SmolLM2-135M-Instruct", progress=True))
    return job, time.perf_counter() - started


def _evaluate(args: argparse.Namespace, memory: VectorMemory, tokenizer: Any, name: str, out: Path,
              data: dict) -> str:
    """Score the test split (and the dev split) in the adapter modes; fills `data`, returns the tables."""
    def base() -> torch.nn.Module:  # fresh each time: applying the adapter changes the model in place
        return load_generator(home=Path(args.model_home), dtype=args.dtype)[0]

    def report(items: list, modes: list[str], **kwargs: Any) -> tuple[list, dict]:
        return eval_report(base(), tokenizer, memory, args.logs, items, modes=modes, batch_size=args.batch_size,
                           progress=True, **kwargs)

    items = read_eval(args.eval)[: args.limit or None]
    results, summary = report(items, args.modes.split(","),
                              predictions=out / f"consolidation_{name}.predictions.jsonl")
    data.update(summary)
    data["eval_dtype"] = args.dtype
    if args.drop_consolidated:
        memory.config = replace(memory.config, retrieve_consolidated=False)
        dropped, _ = report(items, ["memory+adapter"])
        memory.config = replace(memory.config, retrieve_consolidated=True)
        for r in dropped:
            r.mode = "memory+adapter, consolidated out of retrieval"
        results += dropped
        data["results"] += [r.summary() for r in dropped]
    table = markdown_table(results)
    if args.dev:
        dev_results, dev_summary = report(read_eval(args.dev)[: args.limit or None], args.dev_modes.split(","))
        data["dev"] = {"eval": args.dev, "results": dev_summary["results"]}
        table += f"\n\nDev split ({args.dev}):\n\n" + markdown_table(dev_results)
    return table


if __name__ == "__main__":
    main()
