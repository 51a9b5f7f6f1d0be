"""Does a tenant keep what it was served on an old topic after a job on a new one? Two topics whose best modes differ.

    python benchmarks/bench_drift_modes.py --topics flights,intents --topic-size 120 --eval-per-topic 24 \
        --max-steps 60 --epochs 3 --threads 1 --out benchmarks/results

`--topics` names the two topics, in order, among: `nfcats` (NFCats' 8 question categories, `--logs` and `--eval`),
and three tasks generated here (`benchmarks/intents.py`, seeded; not collected): `intents`, 12 banking intents of
templated paraphrases, whose requests of one intent lie near each other, so the vote does well; `products`, 6 shop
departments sharing the same message templates, whose nearest logged requests are often another department's;
`flights`, the destination of a trip between two of 6 cities, which a sentence embedder hardly tells from the
origin, so the vote is near a coin toss between the two while the answer follows from the words around each
city. Each topic is
`--topic-size` logged interactions (seeded). Job 1 consolidates topic 1's logs; topic 2's are ingested into the
same tenant; job 2 consolidates them (training on from job 1's adapter with replay, the default). Both are
default jobs capped at `--max-steps`.

After each job every mode is scored on `--eval-per-topic` new questions of each topic (the adapter modes with the
adapter active then), and the default served mode is read off them: the mode the job chose over every live
held-out slice (`model/slices.py`), beside the one the newest slice alone would have chosen (the behaviour before)
and each topic served its own best slice's mode (a request's nearest held-out slice deciding; measured, not how
the tenant is served). Writes `<name>.json`, `.md` and `.png`, with the seeds and the load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_drift import opened, write_jsonl  # noqa: E402
from intents import generated_task  # noqa: E402
from logmem.api.jobs import JobRunner, consolidation_job  # noqa: E402
from logmem.memory import VectorMemory  # noqa: E402
from logmem.memory.vocabulary import NEW_SLICE, SERVING_MODES  # noqa: E402
from logmem.model.config import GeneratorConfig  # noqa: E402
from logmem.model.evaluate import EvalItem, evaluate, read_eval  # noqa: E402
from logmem.model.loading import load_generator  # noqa: E402
from logmem.model.slices import nearest_slice  # noqa: E402

logger = logging.getLogger("bench_drift_modes")
TOPICS = {"nfcats": "NFCats", "intents": "intents (generated)", "products": "products (generated)",
          "flights": "flights (generated)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", default="data/nfcats/logs.jsonl", help="topic 1's logs (default: %(default)s)")
    p.add_argument("--eval", default="data/nfcats/test.eval.jsonl", help="topic 1's questions (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--topic-size", type=int, default=200, help="logged interactions per topic (seeded)")
    p.add_argument("--eval-per-topic", type=int, default=60, help="new questions per topic (seeded); 0: read each "
                   "topic's figures off the jobs' held-out slices (no test questions: half the time, but the figures "
                   "the choice was made on)")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1, help="ConsolidationConfig.epochs (--max-steps caps the steps)")
    p.add_argument("--holdout", type=float, default=0.2, help="ConsolidationConfig.holdout")
    p.add_argument("--k", type=int, default=4, help="experiences in a memory prompt: the jobs' teacher_k and the "
                   "served generator's k (4, not 8: half the prompt, for 2 shared CPU cores)")
    p.add_argument("--topics", default="nfcats,intents",
                   help=f"topic 1 and topic 2, two of {', '.join(TOPICS)} (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="of the samples, the generated topic and the jobs")
    p.add_argument("--name", default="drift_modes")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--model-home", default=os.environ.get("LOGMEM_MODEL_CACHE", ".logmem"))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    names = args.topics.split(",")
    if len(names) != 2 or len(set(names)) != 2 or not set(names) <= set(TOPICS):
        p.error(f"--topics: two different topics of {', '.join(TOPICS)}, got {args.topics!r}")
    topics, start = [], 1_760_000_000.0  # the second topic's logs come after the first's
    for name in names:
        logs, eval_items = topic(args, name, start)
        topics.append((TOPICS[name], logs, eval_items))
        start = max(r["timestamp"] for r in logs) + 1
    (first, first_logs, first_items), (second, second_logs, second_items) = topics
    items = {first: first_items, second: second_items}
    params = {"method": "sft", "epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size,
              "holdout": args.holdout,
              "teacher_k": args.k, "seed": args.seed}
    data: dict[str, Any] = {"topics": [first, second], "logs_per_topic": args.topic_size,
                            "eval_per_topic": args.eval_per_topic, "params": params, "seed": args.seed,
                            "threads": args.threads, "load_average": {"start": os.getloadavg()}, "rows": []}

    def save() -> None:  # after every job: a run cut short keeps what it measured
        data["minutes"] = round((time.perf_counter() - started) / 60, 1)
        data["load_average"]["end"] = os.getloadavg()
        data["targets"] = targets(data["rows"])
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps(data, indent=2, default=str))
        (out / f"{args.name}.md").write_text(markdown(data))
        plot(data["rows"], out / f"{args.name}.png")

    with tempfile.TemporaryDirectory() as tmp, opened(Path(tmp) / "home") as memory:
        memory.ingest_file(write_jsonl(Path(tmp) / "topic1.jsonl", first_logs))
        data["rows"].append(run_job(args, memory, "job 1 (topic 1's logs)", params, {first: items[first]}))
        save()
        memory.ingest_file(write_jsonl(Path(tmp) / "topic2.jsonl", second_logs))
        data["rows"].append(run_job(args, memory, "job 2 (topic 2's logs)", params, items))
        save()
    print((Path(args.out) / f"{args.name}.md").read_text())


def topic(args: argparse.Namespace, name: str, start: float) -> tuple[list[dict[str, Any]], list[EvalItem]]:
    """`name`'s `--topic-size` logged interactions (timestamped from `start`) and `--eval-per-topic` new questions."""
    if name == "nfcats":
        lines = Path(args.logs).read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        logs = sorted(random.Random(args.seed).sample(records, args.topic_size), key=lambda r: r["timestamp"])
        shift = start - min(r["timestamp"] for r in logs)
        logs = [{**r, "timestamp": r["timestamp"] + shift} for r in logs]
        return logs, random.Random(args.seed).sample(read_eval(args.eval), args.eval_per_topic)
    logs, raw = generated_task(name, args.topic_size, max(args.eval_per_topic, 1), args.seed, start=start)
    return logs, [EvalItem(r["id"], r["messages"], r["reference"]) for r in raw][:args.eval_per_topic]


def run_job(args: argparse.Namespace, memory: VectorMemory, name: str, params: dict[str, Any],
            items: dict[str, list[EvalItem]]) -> dict[str, Any]:
    """One default consolidation job (the code `logmem consolidate` runs), then every mode scored per topic."""
    model, tokenizer = load_generator(home=Path(args.model_home), dtype="float32")
    runner = JobRunner(memory)
    t0 = time.perf_counter()
    job = runner.run(runner.submit("consolidate", "default", params),
                     consolidation_job(memory, model, tokenizer, tenant="default", params=params,
                                       base_model="SmolLM2-135M-Instruct", progress=True))
    if job.metrics is None:
        raise RuntimeError(f"{name} failed: {job.error}")
    m, serving = job.metrics, job.metrics["serving"]
    logger.info("%s: %s in %.0f s: %s; served %s (%s)", name, job.status, time.perf_counter() - t0, m["gate"],
                serving["mode"], serving["reason"])
    active = memory.active_adapter("default")
    routes = serving["choice"]["per_topic"]["routes"]
    if args.eval_per_topic:
        correct = score(args, memory, tokenizer, active.path if active else None, items)
        topic_of = route(memory, items, m)
        accuracy = {t: {mode: mean([correct[mode][it.id] for it in its]) for mode in correct}
                    for t, its in items.items()}
        for t, its in items.items():
            accuracy[t]["per topic"] = mean([correct[routes[topic_of[it.id]]][it.id] for it in its])
    else:  # the job's own figures: each topic's held-out slice (the newest slice is the newest topic's)
        topics = list(items)
        earlier = [s for s in serving["slices"] if s["name"] != NEW_SLICE]
        by_topic = {**dict(zip(topics[:-1], earlier)), topics[-1]: serving["slices"][0]}  # [0]: the job's own
        accuracy = {t: {**s["figures"], "per topic": s["figures"][routes[s["name"]]]} for t, s in by_topic.items()}
    return {"name": name, "status": job.status, "version": m["version"], "active": active.version if active else None,
            "job_seconds": round(time.perf_counter() - t0, 1), "steps": m.get("steps"), "gate": m["gate"],
            "served": serving["mode"], "newest_slice": serving["newest_slice_mode"], "reason": serving["reason"],
            "slices": serving["slices"], "routes": routes, "accuracy": accuracy,
            "load_average": os.getloadavg()}


def score(args: argparse.Namespace, memory: VectorMemory, tokenizer: Any, adapter: str | None,
          items: dict[str, list[EvalItem]]) -> dict[str, dict[str, bool]]:
    """mode -> item id -> right, every mode (the adapter modes with `adapter`) on every topic's questions."""
    everything = [it for its in items.values() for it in its]
    model, _ = load_generator(home=Path(args.model_home), dtype="float32")
    modes = [m for m in SERVING_MODES if adapter is not None or m not in ("consolidated", "memory+adapter")]
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as pred:
        evaluate(model, tokenizer, memory, everything, modes=modes, adapter=adapter, batch_size=16,
                 config=GeneratorConfig(k=args.k),
                 max_new_tokens=args.max_new_tokens, predictions=pred.name, progress=True)
        rows = [json.loads(line) for line in Path(pred.name).read_text().splitlines()]
    out: dict[str, dict[str, bool]] = {m: {} for m in modes}
    for r in rows:
        out[r["mode"]][r["id"]] = bool(r["correct"])
    return out


def route(memory: VectorMemory, items: dict[str, list[EvalItem]], metrics: dict[str, Any]) -> dict[str, str]:
    """item id -> the slice holding its nearest held-out experience (the request's body, its instruction left out,
    as the memory embeds it)."""
    names = {s["name"] for s in metrics["serving"]["slices"]}
    held = {NEW_SLICE: metrics["holdout_ids"]}
    for a in memory.adapters("default"):
        if a.version in names:
            held[a.version] = a.holdout
    live = {e.id: e.vector for e in memory.iter_experiences("default")}
    vectors = {n: np.stack([live[i] for i in ids if i in live]) for n, ids in held.items()
               if any(i in live for i in ids)}
    everything = [it for its in items.values() for it in its]
    xq = memory.embedder.encode([it.messages[-1]["content"].split("\n\n", 1)[-1] for it in everything])
    return dict(zip([it.id for it in everything], nearest_slice(vectors, np.asarray(xq, dtype=np.float32))))


def mean(values: list[bool]) -> float:
    return round(sum(values) / max(len(values), 1), 4)


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two: after job 2, topic 1 served by default at >= 95% of after job 1; topic 2 at >= its best
    single mode. For the choice over every slice and for the newest slice's alone."""
    if len(rows) < 2:
        return {}
    t1 = next(iter(rows[0]["accuracy"]))
    t2 = next(t for t in rows[1]["accuracy"] if t != t1)
    one, two = rows[0]["accuracy"][t1], rows[1]["accuracy"]
    if t1 not in two:
        return {"note": f"no figures for {t1} after job 2 (job 1 was {rows[0]['status']}: no earlier slice)"}
    best_2 = max(two[t2][m] for m in SERVING_MODES if m in two[t2])
    out: dict[str, Any] = {}
    for rule, before, after in (("every slice", rows[0]["served"], rows[1]["served"]),
                                ("newest slice alone", rows[0]["newest_slice"], rows[1]["newest_slice"])):
        kept = two[t1][after] / one[before] if one[before] else 0.0
        out[rule] = {"topic_1_kept": round(kept, 3), "topic_1_ok": kept >= 0.95,
                     "topic_2": two[t2][after], "topic_2_best_single": best_2,
                     "topic_2_ok": two[t2][after] >= best_2}
    return out


def markdown(data: dict[str, Any]) -> str:
    load = data["load_average"]
    lines = [f"# Serving modes under drift: {data['topics'][0]}, then {data['topics'][1]} ({data.get('minutes')} min, "
             f"{data['threads']} threads, load average {load['start'][0]:.1f} at the start, "
             f"{load.get('end', load['start'])[0]:.1f} at the end)", "",
             f"{data['logs_per_topic']} logged interactions per topic into one tenant; "
             + (f"{data['eval_per_topic']} new questions per topic" if data["eval_per_topic"] else
                "each topic's figures are its held-out slice's, measured by the jobs (new questions to the adapters, "
                "each one's own experience left out of its retrieval; the figures the choice was made on)")
             + f"; seed {data['seed']} (samples, the generated topic, the jobs); jobs: "
             f"{json.dumps(data['params'])}. The topics marked generated are made by benchmarks/intents.py, not "
             "collected.", "",
             f"Topic 1: {data['topics'][0]}; topic 2: {data['topics'][1]}.", "",
             "| after | job | served by default (every slice) | newest slice alone | topic | " +
             " | ".join(SERVING_MODES) + " | default | newest-slice default | per topic (not served) |",
             "|---|---|---|---|---|" + "---|" * (len(SERVING_MODES) + 3)]
    for r in data["rows"]:
        for topic, acc in r["accuracy"].items():
            cells = " | ".join(f"{acc[m]:.3f}" if m in acc else "–" for m in SERVING_MODES)
            lines.append(f"| {r['name']} | {r['status']} ({r['version']}) | {r['served']} | {r['newest_slice']} | "
                         f"{topic} | {cells} | **{acc[r['served']]:.3f}** | {acc[r['newest_slice']]:.3f} | "
                         f"{acc['per topic']:.3f} |")
    lines += ["", "Targets (after job 2):", ""]
    for rule, t in data.get("targets", {}).items():
        if rule == "note":
            lines.append(f"- {t}")
            continue
        lines.append(f"- {rule}: topic 1 kept {t['topic_1_kept']:.3f} ({'yes' if t['topic_1_ok'] else 'no'}, "
                     f">= 0.95); topic 2 {t['topic_2']:.3f} against its best single mode {t['topic_2_best_single']:.3f}"
                     f" ({'yes' if t['topic_2_ok'] else 'no'})")
    lines += ["", "Held-out slices each job chose over (figure per mode, traffic weight):", ""]
    for r in data["rows"]:
        for s in r["slices"]:
            shown = ", ".join(f"{m} {v:.3f}" for m, v in s["figures"].items())
            lines.append(f"- {r['name']}, slice {s['name']} ({s['measured']} of {s['size']}, weight {s['weight']:.2f}):"
                         f" {shown}; served before {s['served_before']:.3f}")
        lines.append(f"- {r['name']}: {r['reason']}")
        lines.append(f"- {r['name']}: gate: {r['gate']}")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topics = list(dict.fromkeys(t for r in rows for t in r["accuracy"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, topic in zip(axes, topics):
        shown = [(i, r) for i, r in enumerate(rows) if topic in r["accuracy"]]
        for mode in (*SERVING_MODES, "per topic"):
            xs = [i for i, r in shown if mode in r["accuracy"][topic]]
            ax.plot(xs, [rows[i]["accuracy"][topic][mode] for i in xs], marker="o", alpha=0.6, label=mode)
        ax.plot([i for i, _ in shown], [r["accuracy"][topic][r["served"]] for _, r in shown], marker="s", color="k",
                linewidth=2.5, label="default (every slice)")
        ax.plot([i for i, _ in shown], [r["accuracy"][topic][r["newest_slice"]] for _, r in shown], marker="x",
                color="red", linestyle="--", label="default (newest slice alone)")
        ax.set_xticks(range(len(rows)), [f"after job {i + 1}" for i in range(len(rows))])
        ax.set_title(topic)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy on new questions")
    axes[-1].legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
