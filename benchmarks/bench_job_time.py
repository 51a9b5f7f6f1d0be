"""How long does a default consolidation job take, and does stopping early cost held-out quality?

    python benchmarks/bench_job_time.py --tenants nfcats,support6k --out benchmarks/results

Per tenant: a fresh home, the logs ingested, one consolidation job with `ConsolidationConfig`'s defaults (the early
stop on the held-out NLL, the wall-time bound; the same code as `logmem consolidate` and the service's worker), and
what its metrics say: steps run of those planned, why it stopped, seconds, the held-out figures and curve. Training is
CPU-bound: run nothing else, and read the load average recorded before and after each job (the cores are shared).

Tenants:
- `nfcats`: `data/nfcats/logs.jsonl`, 1,438 interactions (an 8-label question-type task, README).
- `support6k`: 6,600 synthetic interactions of a 6-label short-answer task made here (`support_logs`): a customer
  message from templates and slot values (seeded), asked which team handles it, answered with one of 6 labels
  (5% of the answers a random label: logs are noisy). It stands in for the issue's 6,600-interaction tenant, which
  is not in the repository; its messages are far more regular than real ones.

`--full-epoch` also runs each tenant's job with no early stop and no wall-time bound (one epoch, measured once after
its last step): on 2 cores that takes about an hour for NFCats. `--runs` names the runs instead ("default", "full
epoch"), `--include FILE` joins the rows of an earlier run's JSON (the full epoch run at another time, say; a row
whose `run` names other settings, "full epoch (earlier defaults: ...)", says so in the table). `--note` adds a
sentence to the table's footer.
`--recorded NAME=FILE` adds a job recorded earlier by
`bench_consolidation.py` to the table instead (its figures as recorded; its held-out slice is named).
`--eval NAME=FILE` scores the job's adapter on an eval split (memory+adapter mode, batched); `support6k=generated`
is 480 new messages of the support task (another seed) with their true teams.
Writes `job_time.json`, `job_time.md` and `job_time.png` (job time against experiences).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from common import save_figure  # noqa: E402
from logmem.api.jobs import JobRunner, consolidation_job  # noqa: E402
from logmem.memory import VectorMemory  # noqa: E402
from logmem.model.config import ConsolidationConfig  # noqa: E402
from logmem.model.embedding import default_embedder  # noqa: E402
from logmem.model.evaluate import evaluate, read_eval  # noqa: E402
from logmem.model.loading import load_generator  # noqa: E402
from logmem.model.training import learning_rate  # noqa: E402

LABELS = ["BILLING", "SHIPPING", "RETURNS", "ACCOUNT", "TECHNICAL", "CANCELLATION"]
ASK = ("Which team should handle this customer message? Answer with one of: " + ", ".join(LABELS) + ".\n\n")
# per label: message templates; {item}, {n}, {day} and {site} are filled from the slot values below
TEMPLATES = {
    "BILLING": ["I was charged twice for order {n}, please refund one of the payments.",
                "Why does my invoice for the {item} show a different amount than the checkout page?",
                "My card was declined for the {item} but the money left my account on {day}.",
                "Can I get a VAT invoice for order {n}? Our accounting needs it.",
                "The discount code was not applied to my {item}, I paid full price."],
    "SHIPPING": ["Order {n} still says 'label created' since {day}, where is my {item}?",
                 "Can you ship the {item} to a different address than the one on order {n}?",
                 "The courier left my parcel at the wrong door on {day}.",
                 "How long does delivery of a {item} to Norway usually take?",
                 "Tracking for order {n} has not moved in a week."],
    "RETURNS": ["The {item} arrived broken, how do I send it back?",
                "I want to return the {item} from order {n}, it is the wrong size.",
                "Is the return shipping for the {item} free or do I pay it?",
                "I sent the {item} back on {day}, when will you confirm you got it?",
                "Can I exchange the {item} for another colour instead of a refund?"],
    "ACCOUNT": ["I cannot log in to {site}, the password reset email never arrives.",
                "Please change the email address on my account to my work one.",
                "How do I delete my account on {site} and all my data?",
                "Someone else seems to have used my account on {day}.",
                "I want to merge my two accounts, one has order {n} on it."],
    "TECHNICAL": ["The {item} will not turn on after the update on {day}.",
                  "The app on {site} crashes every time I open my orders.",
                  "My {item} disconnects from wifi every few minutes.",
                  "The {item} shows error code E{n} when I start it.",
                  "The firmware update for the {item} fails at 80 percent."],
    "CANCELLATION": ["Please cancel order {n} before it ships, I ordered the {item} by mistake.",
                     "I want to cancel my subscription, it renews on {day}.",
                     "How do I stop the monthly {item} plan?",
                     "Cancel the {item} from order {n}, I found it cheaper elsewhere.",
                     "Can I still cancel order {n}? It was placed on {day}."],
}
ITEMS = ["blender", "router", "desk lamp", "rain jacket", "phone case", "coffee grinder", "monitor", "backpack",
         "air purifier", "keyboard", "tent", "electric kettle", "smart watch", "vacuum cleaner", "bike light"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend", "the 3rd", "the 17th"]
SITES = ["the website", "the mobile app", "the customer portal"]
GREETINGS = ["", "Hi, ", "Hello, ", "Good morning. ", "Hey there, ", "Dear support, "]
SIGN_OFFS = ["", " Thanks.", " Thank you!", " Regards, {name}.", " Cheers, {name}.", " Please help asap."]
NAMES = ["Maria", "Tom", "Aisha", "Kenji", "Lena", "Omar", "Sofia", "Pavel", "Grace", "Diego", "Nina", "Ravi"]
NOISE = 0.05  # share of answers that are a random label


def support_logs(path: Path, n: int, seed: int = 0, *, eval_items: bool = False) -> Path:
    """`n` liked interactions of the synthetic 6-label task (see the module's docstring), written to `path`; with
    `eval_items`, eval items (`model/evaluate.py`'s format) whose reference is the message's true team."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            label = rng.choice(LABELS)
            body = rng.choice(TEMPLATES[label]).format(item=rng.choice(ITEMS), n=rng.randint(1000, 99999),
                                                       day=rng.choice(DAYS), site=rng.choice(SITES))
            text = rng.choice(GREETINGS) + body + rng.choice(SIGN_OFFS).format(name=rng.choice(NAMES))
            if eval_items:
                fh.write(json.dumps({"id": f"support-eval-{i}", "messages": [{"role": "user", "content": ASK + text}],
                                     "reference": [label]}) + "\n")
                continue
            answer = rng.choice(LABELS) if rng.random() < NOISE else label
            fh.write(json.dumps({"id": f"support-{i}", "timestamp": 1_760_000_000 + i, "user": f"u{i % 500}",
                                 "messages": [{"role": "user", "content": ASK + text},
                                              {"role": "assistant", "content": answer}],
                                 "feedback": [{"turn": 1, "kind": "like"}]}) + "\n")
    return path


def reset_peak_rss() -> None:
    """Start the process's resident high-water mark (VmHWM) afresh, where Linux allows it (`clear_refs` 5)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> int | None:
    """The process's resident high-water mark since `reset_peak_rss`, in MiB (None off Linux)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    return int(status.split("VmHWM:")[1].split()[0]) // 1024


def run_job(name: str, logs: Path, params: dict[str, Any], args: argparse.Namespace,
            eval_file: str | None) -> dict[str, Any]:
    """One job on a fresh home with `params`; its metrics, wall time and the load average around it."""
    with contextlib.ExitStack() as stack:
        home = stack.enter_context(tempfile.TemporaryDirectory())
        memory = stack.enter_context(VectorMemory(home, embedder=default_embedder()))
        memory.ingest_file(logs, progress=True)
        experiences = sum(1 for _ in memory.iter_experiences("default"))
        model, tokenizer = load_generator(home=Path(args.model_home), dtype="float32")
        runner = JobRunner(memory)
        job_id = runner.submit("consolidate", "default", params)
        reset_peak_rss()
        load_before, started, cpu_before = os.getloadavg(), time.perf_counter(), os.times()
        job = runner.run(job_id, consolidation_job(memory, model, tokenizer, tenant="default", params=params,
                                                   base_model="SmolLM2-135M-Instruct", progress=True))
        seconds, load_after, cpu_after = time.perf_counter() - started, os.getloadavg(), os.times()
        cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
        peak = peak_rss_mib()
        m = dict(job.metrics or {})
        m.pop("holdout_ids", None)
        row = {"tenant": name, "logs": str(logs), "experiences": experiences, "params": params,
               "status": job.status, "error": job.error, "job_seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
               "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
               "peak_rss_mib": peak, "metrics": m}
        if eval_file and m.get("version"):
            adapter = memory.store.get_adapter(version=m["version"])
            items = read_eval(eval_file)[: args.limit or None]
            fresh = load_generator(home=Path(args.model_home), dtype="float32")[0]
            t0 = time.perf_counter()
            (res,) = evaluate(fresh, tokenizer, memory, items, modes=["memory+adapter"], adapter=adapter.path,
                              batch_size=16, progress=True)
            row["eval"] = {"file": Path(eval_file).name, "mode": "memory+adapter", "n": res.n,
                           "accuracy": round(res.accuracy, 4), "seconds": round(time.perf_counter() - t0, 1)}
    logging.info("%s: %s", name, {k: v for k, v in row.items() if k != "metrics"})
    return row


def recorded(name: str, path: str) -> dict[str, Any]:
    """A job recorded earlier by bench_consolidation.py, as a row of this table."""
    data = json.loads(Path(path).read_text())
    m = dict(data["job"]["metrics"])
    m.pop("holdout_ids", None)
    accuracy = {r["mode"]: r["accuracy"] for r in data.get("results", [])}
    return {"tenant": name, "recorded": path, "status": data["job"]["status"], "job_seconds": data["job_seconds"],
            "params": data["params"], "metrics": m, "experiences": None,
            **({"eval": {"file": "data/nfcats/test.eval.jsonl", "mode": "memory+adapter",
                         "accuracy": accuracy["memory+adapter"], "n": 480}} if "memory+adapter" in accuracy else {})}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# How long a default consolidation job takes", "",
             f"{result['cores']} cores, torch {result['threads']} threads, one job at a time; defaults: "
             + ", ".join(f"{k}={v}" for k, v in result["defaults"].items()) + ".", "",
             "| tenant | run | experiences | held out | steps run / planned | stopped by | job s | train s | "
             "job CPU s | peak RSS MiB | held-out NLL base -> student | held-out accuracy (student's best mode) | "
             "eval accuracy | gate | load avg before / after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        m = r["metrics"]
        run = "recorded: full epoch" if r.get("recorded") else r["run"]
        steps = f"{m['steps']} / {m['steps_planned']}" if "steps" in m else "all (one epoch)"
        nll = f"{m.get('base_nll', float('nan')):.4f} -> {m.get('student_nll', float('nan')):.4f}"
        ev = f"{r['eval']['accuracy']:.3f} (n={r['eval']['n']})" if "eval" in r else "–"
        load = (f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}" if "load_before" in r else "–")
        student = (m.get("serving") or {}).get("student") or {}
        held = (f"{max(student.values()):.3f} ({max(student, key=student.get)}; served before: "
                f"{m['serving']['served_before']} {m['serving']['served_before_figure']:.3f})"
                if student and m["serving"].get("metric") == "accuracy" else "–")
        lines.append(f"| {r['tenant']} | {run} | {r['experiences'] or '–'} | {m.get('holdout', '–')} | {steps} | "
                     f"{m.get('stop', '–')} | {r['job_seconds']:.0f} | {m.get('train_seconds', '–')} | "
                     f"{r.get('cpu_seconds', '–')} | {r.get('peak_rss_mib') or '–'} | {nll} | {held} | {ev} | "
                     f"{r['status']} | {load} |")
    lines += ["", "Job CPU s: user + system seconds of the benchmark's process over the job (torch on "
              f"{result['threads']} threads); on cores of its own the job's wall time would be at least CPU s / "
              f"{result['threads']}. {result.get('note', '')}", "", "Held-out curves (step: NLL):", ""]
    for r in result["rows"]:
        if r["metrics"].get("curve"):
            shown = ", ".join(f"{s}: {v:.4f}" for s, v in r["metrics"]["curve"])
            lines.append(f"- {r['tenant']} ({r.get('run', 'recorded')}): {shown}; kept step "
                         f"{r['metrics'].get('best_step')}")
    return "\n".join(lines) + "\n"


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for run, marker in (("default", "o"), ("full epoch", "s")):
        rows = sorted((r for r in result["rows"] if r.get("run", "").startswith(run) and r["experiences"]),
                      key=lambda r: r["experiences"])
        if rows:
            ax.plot([r["experiences"] for r in rows], [r["job_seconds"] / 60 for r in rows], marker=marker,
                    label=f"{run} job")
    label: str | None = "full epoch, extrapolated from the job's pace"
    for r in result["rows"]:
        if r["run"] == "default" and r["metrics"].get("steps"):
            m = r["metrics"]  # what the whole plan would take at this job's pace (steps only, not measured)
            pace = m["train_seconds"] / m["steps"]
            ax.scatter([r["experiences"]], [(r["job_seconds"] + pace * (m["steps_planned"] - m["steps"])) / 60],
                       marker="x", color="grey", label=label)
            label = None  # one legend entry
    ax.axhline(15, color="red", linestyle=":", label="15 minutes")
    ax.set_xlabel("experiences in the tenant")
    ax.set_ylabel("job wall time (minutes)")
    ax.set_yscale("log")
    ax.set_title(f"Consolidation job time on {result['cores']} CPU cores")
    save_figure(fig, [ax], path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tenants", default="nfcats,support6k")
    p.add_argument("--support-n", type=int, default=6_600, help="interactions of the synthetic support tenant")
    p.add_argument("--full-epoch", action="store_true", help="also run each job with no early stop or time bound")
    p.add_argument("--runs", default="", help="which runs, comma-separated: default, full epoch (instead of "
                                               "--full-epoch; e.g. 'full epoch' alone)")
    p.add_argument("--include", action="append", default=[], help="a job_time.json of an earlier run whose rows "
                                                                   "join this table (same code, another time)")
    p.add_argument("--stem", default="job_time", help="output file names: STEM.json, .md, .png")
    p.add_argument("--recorded", action="append", default=[], help="NAME=FILE of a bench_consolidation.py result")
    p.add_argument("--eval", action="append", default=[], help="NAME=FILE: score that tenant's adapter on FILE")
    p.add_argument("--limit", type=int, default=0, help="only the first N eval items")
    p.add_argument("--params", default="{}", help="JSON of ConsolidationConfig fields for every job")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--model-home", default=os.environ.get("LOGMEM_MODEL_CACHE", ".logmem"))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--note", default="", help="a sentence for the table's footer (what ran beside, what differs)")
    p.add_argument("--render", default="", help="only write the table and plot of this saved job_time.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(markdown(saved))
        plot(Path(args.render).with_suffix(".png"), saved)
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    evals = dict(e.split("=", 1) for e in args.eval)
    defaults = ConsolidationConfig()
    result: dict[str, Any] = {"cores": os.cpu_count(), "threads": args.threads, "rows": [],
                              "defaults": {k: getattr(defaults, k) for k in (
                                  "student_k", "teacher_k", "eval_every", "min_steps", "patience", "min_gain",
                                  "max_seconds", "average", "max_holdout", "epochs")}, "note": args.note}
    result["defaults"]["lr"] = (f"{learning_rate(replace(defaults, with_memory=True)):g} (memory+adapter) / "
                                f"{learning_rate(replace(defaults, with_memory=False)):g} (bare)")
    with tempfile.TemporaryDirectory() as tmp:
        logs = {"nfcats": Path("data/nfcats/logs.jsonl"),
                "support6k": support_logs(Path(tmp) / "support.jsonl", args.support_n)}
        if evals.get("support6k") == "generated":  # 480 new messages (another seed), their true teams
            evals["support6k"] = str(support_logs(Path(tmp) / "support.eval.jsonl", 480, seed=1, eval_items=True))
        base = json.loads(args.params)  # the full epoch: every planned step, measured once after the last
        every = {"default": base, "full epoch": {**base, "eval_every": 0, "patience": 0, "max_seconds": 0}}
        names = args.runs.split(",") if args.runs else ["default", *(["full epoch"] if args.full_epoch else [])]
        runs = [(n, every[n]) for n in names]
        for name in args.tenants.split(","):
            for run, params in runs:
                row = run_job(name, logs[name], params, args, evals.get(name))
                result["rows"].append({**row, "run": run})
                (out / f"{args.stem}.json").write_text(json.dumps(result, indent=2))  # each job kept as it ends
    for earlier in args.include:
        result["rows"] += json.loads(Path(earlier).read_text())["rows"]
    for spec in args.recorded:
        name, path = spec.split("=", 1)
        result["rows"].append({**recorded(name, path), "run": "recorded full epoch"})
    (out / f"{args.stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{args.stem}.md").write_text(markdown(result))
    plot(out / f"{args.stem}.png", result)
    print(markdown(result))


if __name__ == "__main__":
    main()
