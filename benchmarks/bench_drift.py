"""Does consolidation accumulate when the logs drift? Two jobs on NFCats split by category, one strategy per arm.

    python benchmarks/bench_drift.py --logs data/nfcats/logs.jsonl \
        --eval data/nfcats/test.eval.jsonl --out benchmarks/results

Phase 1 is the logs of 4 question categories, phase 2 those of the other 4 (`PHASE_1`), `--phase-size`
interactions each (seeded). Job 1 consolidates phase 1; then phase 2 is ingested and job 2 runs once per arm,
each from a copy of the home after job 1:

- `continue+replay` (the default): train on from the active adapter, new experiences plus a seeded replay
  sample of those the lineage covers (`ConsolidationConfig.replay`);
- `fresh+replay`: a fresh LoRA on the new experiences plus the same replay sample;
- `continue`: train on from the active adapter on the new experiences alone;
- `today`: a fresh LoRA on the new experiences alone (the behaviour before accumulation);
- `single`: one job over both phases in a fresh home (the reference job 2 should reach on phase 2).

Every job's adapter is scored in the consolidated mode (the adapter, no memory in the prompt) on
`--eval-per-phase` test questions of each phase's categories, whatever its gate said (the verdict is
reported beside it). Writes `drift.json`, `drift.md` and `drift.png` (per-phase accuracy after each job).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from logmem.api.jobs import JobRunner, consolidation_job  # noqa: E402
from logmem.memory import VectorMemory  # noqa: E402
from logmem.model.embedding import default_embedder  # noqa: E402
from logmem.model.evaluate import EvalItem, evaluate, read_eval  # noqa: E402
from logmem.model.loading import load_generator  # noqa: E402

logger = logging.getLogger("bench_drift")
PHASE_1 = ("NOT-A-QUESTION", "DEBATE", "INSTRUCTION", "COMPARISON")  # 769 logs / 268 test questions
PHASE_2 = ("FACTOID", "EVIDENCE-BASED", "REASON", "EXPERIENCE")  # 669 / 212
ARMS: dict[str, dict[str, Any]] = {  # job 2's parameters, over the shared job parameters
    "continue+replay": {"start": "active"},
    "fresh+replay": {"start": "base"},
    "continue": {"start": "active", "replay": 0.0},
    "today": {"start": "base", "replay": 0.0},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", default="data/nfcats/logs.jsonl", help="native-schema JSONL (default: %(default)s)")
    p.add_argument("--eval", default="data/nfcats/test.eval.jsonl",
                   help="the test split (questions with their reference category) (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--phase-size", type=int, default=250, help="interactions per phase (seeded sample)")
    p.add_argument("--eval-per-phase", type=int, default=100, help="test questions per phase (seeded sample)")
    p.add_argument("--arms", default="continue+replay,fresh+replay,continue,today,single")
    p.add_argument("--batch-size", type=int, default=4, help="training pairs per step")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--replay", type=float, default=1.0, help="ConsolidationConfig.replay of the replay arms")
    p.add_argument("--seed", type=int, default=0, help="of the phase and test samples, and of the jobs")
    p.add_argument("--job-seed", type=int, default=None, help="of the jobs only (default: --seed)")
    p.add_argument("--name", default="drift", help="the results' file name")
    p.add_argument("--max-new-tokens", type=int, default=10, help="of an answer (the longest label is 7 tokens)")
    p.add_argument("--model-home", default=os.environ.get("LOGMEM_MODEL_CACHE", ".logmem"))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    phases = split_logs(Path(args.logs), args.phase_size, args.seed)
    items = {n: sample_items(read_eval(args.eval), cats, args.eval_per_phase, args.seed)
             for n, cats in (("phase 1", PHASE_1), ("phase 2", PHASE_2))}
    seed = args.seed if args.job_seed is None else args.job_seed
    shared = {"method": "sft", "epochs": args.epochs, "batch_size": args.batch_size, "seed": seed,
              "replay": args.replay}
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS) - {"single"}
    if unknown:
        raise SystemExit(f"unknown arms {sorted(unknown)}; expected some of {', '.join([*ARMS, 'single'])}")
    rows: list[dict[str, Any]] = []
    meta = {"phases": {"phase 1": list(PHASE_1), "phase 2": list(PHASE_2)},
            "logs_per_phase": {n: len(r) for n, r in phases.items()},
            "eval_per_phase": {n: len(i) for n, i in items.items()}, "params": shared, "threads": args.threads}

    def save() -> None:  # after every job: a run cut short keeps what it measured
        data = {**meta, "rows": rows, "targets": targets(rows),
                "minutes": round((time.perf_counter() - started) / 60, 1)}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps(data, indent=2, default=str))
        (out / f"{args.name}.md").write_text(markdown(data))
        if any(r["arm"] == "job 1" for r in rows):
            plot(rows, out / f"{args.name}.png")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        logs = {n: write_jsonl(work / f"{n}.jsonl", recs) for n, recs in phases.items()}
        if set(arms) - {"single"}:  # the job-2 arms start from job 1's home
            with opened(work / "after-job-1") as memory:
                memory.ingest_file(logs["phase 1"])
                rows.append(run_job(args, memory, "job 1 (phase 1)", shared, items))
            save()
        for arm in arms:
            if arm == "single":
                with opened(work / "single") as memory:
                    memory.ingest_file(logs["phase 1"])
                    memory.ingest_file(logs["phase 2"])
                    rows.append(run_job(args, memory, "single job (both phases)", shared, items, arm="single"))
            else:
                shutil.copytree(work / "after-job-1", work / arm)
                with opened(work / arm) as memory:
                    memory.ingest_file(logs["phase 2"])
                    rows.append(run_job(args, memory, f"job 2 ({arm})", {**shared, **ARMS[arm]}, items, arm=arm))
            save()
    print((Path(args.out) / f"{args.name}.md").read_text())


def label_of(record: dict[str, Any]) -> str | None:
    """The category the user accepted: the last liked assistant answer (None when none was liked)."""
    liked = {f["turn"] for f in record.get("feedback", []) if f.get("kind") == "like"}
    answers = [m["content"].strip() for i, m in enumerate(record["messages"]) if i in liked]
    return answers[-1] if answers else None


def split_logs(path: Path, size: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """`size` interactions of each phase's categories (seeded), in their logged order."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = {}
    for name, cats in (("phase 1", PHASE_1), ("phase 2", PHASE_2)):
        pool = [i for i, r in enumerate(records) if label_of(r) in cats]
        keep = sorted(random.Random(seed).sample(pool, min(size, len(pool))))
        out[name] = [records[i] for i in keep]
    return out


def sample_items(items: list[EvalItem], cats: tuple[str, ...], n: int, seed: int) -> list[EvalItem]:
    pool = [it for it in items if it.reference[0] in cats]
    return random.Random(seed).sample(pool, min(n, len(pool)))


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@contextlib.contextmanager
def opened(home: Path) -> Iterator[VectorMemory]:
    with VectorMemory(home, embedder=default_embedder()) as memory:
        yield memory


def run_job(args: argparse.Namespace, memory: VectorMemory, name: str, params: dict[str, Any],
            items: dict[str, list[EvalItem]], arm: str = "job 1") -> dict[str, Any]:
    """One consolidation job (the code `logmem consolidate` runs) on a fresh model, then its adapter scored."""
    model, tokenizer = load_generator(home=Path(args.model_home), dtype="float32")
    runner = JobRunner(memory)
    t0 = time.perf_counter()
    job = runner.run(runner.submit("consolidate", "default", params),
                     consolidation_job(memory, model, tokenizer, tenant="default", params=params,
                                       base_model="SmolLM2-135M-Instruct", progress=True))
    seconds = time.perf_counter() - t0
    if job.metrics is None:
        raise RuntimeError(f"{name} failed: {job.error}")
    m = job.metrics
    adapter = memory.store.get_adapter(version=m["version"])
    row = {"arm": arm, "name": name, "status": job.status, "version": m["version"], "parent": m["parent"],
           "train": m["train"], "replay": m["replay"], "steps": -(-m["train_pairs"] // params["batch_size"]),
           "job_seconds": round(seconds, 1), "base_nll": m["base_nll"], "student_nll": m["student_nll"],
           "probe_ppl": [m["base_probe_ppl"], m["student_probe_ppl"]], "forgetting": m["forgetting"],
           "gate": m["gate"]}
    logger.info("%s: %s in %.0f s (%d steps): %s", name, job.status, seconds, row["steps"], m["gate"])
    row["accuracy"] = score(args, memory, tokenizer, adapter.path, items)
    logger.info("%s: consolidated accuracy %s", name, row["accuracy"])
    return row


def score(args: argparse.Namespace, memory: VectorMemory, tokenizer: Any, adapter: str,
          items: dict[str, list[EvalItem]]) -> dict[str, float]:
    """Consolidated-mode accuracy of `adapter` on each phase's questions (one batched pass over all)."""
    everything = [it for phase in items.values() for it in phase]
    model, _ = load_generator(home=Path(args.model_home), dtype="float32")
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as pred:
        evaluate(model, tokenizer, memory, everything, modes=["consolidated"], adapter=adapter, batch_size=16,
                 max_new_tokens=args.max_new_tokens, predictions=pred.name, progress=True)
        correct = {p["id"]: p["correct"] for p in map(json.loads, Path(pred.name).read_text().splitlines())}
    return {n: round(sum(correct[it.id] for it in phase) / len(phase), 4) for n, phase in items.items()}


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two targets for each job-2 arm: phase 1 kept at >= 95% of job 1's, phase 2 within 3 points
    of the single job's."""
    job_1 = next((r for r in rows if r["arm"] == "job 1"), None)
    if job_1 is None:
        return {}
    first = job_1["accuracy"]["phase 1"]
    single = next((r for r in rows if r["arm"] == "single"), None)
    out = {}
    for r in rows:
        if r["arm"] in ("job 1", "single"):
            continue
        kept = r["accuracy"]["phase 1"] / first if first else 0.0
        gap = (single["accuracy"]["phase 2"] - r["accuracy"]["phase 2"]) if single else None
        out[r["arm"]] = {"phase_1_kept": round(kept, 3), "phase_1_ok": kept >= 0.95,
                         "phase_2_gap_to_single": None if gap is None else round(gap, 4),
                         "phase_2_ok": None if gap is None else gap <= 0.03}
    return out


def markdown(data: dict[str, Any]) -> str:
    lines = [f"# Consolidation under drift: NFCats by category ({data['minutes']} min, {data['threads']} threads)",
             "",
             f"Phase 1: {', '.join(data['phases']['phase 1'])}; phase 2: {', '.join(data['phases']['phase 2'])}. "
             f"{data['logs_per_phase']['phase 1']} + {data['logs_per_phase']['phase 2']} logged interactions; "
             f"consolidated-mode accuracy on {data['eval_per_phase']['phase 1']} + "
             f"{data['eval_per_phase']['phase 2']} test questions. Jobs: {json.dumps(data['params'])}.",
             "",
             "| job | gate | trained + replayed | steps | job s | held-out NLL | phase 1 acc | phase 2 acc | "
             "phase 1 kept (>= 0.95) | phase 2 vs single (<= 3 pts) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        t = data["targets"].get(r["arm"], {})
        kept = f"{t['phase_1_kept']:.3f} {'yes' if t['phase_1_ok'] else 'no'}" if t else "–"
        gap = (f"{-100 * t['phase_2_gap_to_single']:+.1f} {'yes' if t['phase_2_ok'] else 'no'}"
               if t and t["phase_2_gap_to_single"] is not None else "–")
        forgot = "; ".join(f"{v}: {f['reference_nll']:.3f} -> {f['student_nll']:.3f}"
                           for v, f in r["forgetting"].items())
        gate = r["status"] + (f" (slice {forgot})" if forgot else "")
        lines.append(f"| {r['name']} | {gate} | {r['train']} + {r['replay']} | {r['steps']} | "
                     f"{r['job_seconds']:.0f} | {r['base_nll']:.3f} -> {r['student_nll']:.3f} | "
                     f"{r['accuracy']['phase 1']:.3f} | "
                     f"{r['accuracy']['phase 2']:.3f} | {kept} | {gap} |")
    lines += ["", "Gate verdicts in full:", ""] + [f"- {r['name']}: {r['gate']}" for r in data["rows"]]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(r for r in rows if r["arm"] == "job 1")
    single = next((r for r in rows if r["arm"] == "single"), None)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, phase in zip(axes, ("phase 1", "phase 2")):
        for r in rows:
            if r["arm"] in ("job 1", "single"):
                continue
            ax.plot([0, 1], [first["accuracy"][phase], r["accuracy"][phase]], marker="o", label=r["arm"])
        if single is not None:
            ax.axhline(single["accuracy"][phase], color="grey", linestyle="--", label="single job, both phases")
        ax.set_xticks([0, 1], ["after job 1", "after job 2"])
        ax.set_title(f"{phase} categories")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("consolidated-mode accuracy")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
