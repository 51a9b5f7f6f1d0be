"""The learning curve: a model that answers a stream of requests, is rated by its users, and gets better.

    python benchmarks/bench_learning.py --logs data/nfcats/logs.jsonl \\
        --eval data/nfcats/test.eval.jsonl --out benchmarks/results
    python benchmarks/bench_learning.py ... --quick   # CI sizes: a handful of requests, one tiny job

The tenant starts empty. Each request of the stream (the user turns of `--logs`, in a seeded order) is answered
by the bundled model through `Runtime.chat`, with the memory and the active adapter as a deployed tenant gets
them. A simulated user rates the answer against the right answer the log holds (the liked answer, or the one a
correction gave): a right answer is liked; a wrong one is disliked, and corrected with the right answer with
probability `--p-correct`; like real users, some answers are not rated (`--p-missing`) and some ratings are
wrong (`--p-wrong`). The memory grows from this feedback alone, and the periodic policy
(`consolidate_after`) queues consolidation jobs, which run between requests as a worker would run them.

Every `--every` requests, accuracy on a fixed held-out set (`--eval`, first `--n-eval` items): memory, vote
(the memory's answers fused by vote), knn (the neighbours' vote, no model) and, once an adapter is active,
consolidated and memory+adapter; the base model once (it does not learn). Writes `learning.json`,
`learning.md` and `learning.png` (accuracy against interactions seen, consolidation points marked).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import save_figure, sized  # noqa: E402
from tqdm import tqdm  # noqa: E402

logger = logging.getLogger("bench_learning")
# Sized to run in ~1 h on 2 cores (a request answered and rated ~5 s, a held-out answer ~1 s, a job ~3 min)
FULL = {"requests": 240, "every": 60, "n_eval": 60, "consolidate_after": 80, "max_steps": 40, "max_tokens": 8}
QUICK = {"requests": 8, "every": 8, "n_eval": 4, "consolidate_after": 2, "max_steps": 1, "max_tokens": 8}
MEMORY_MODES = ("memory", "vote", "knn")
ADAPTER_MODES = ("consolidated", "memory+adapter")


@dataclass(frozen=True)
class Request:
    user: str  # the user's turn as the log has it
    right: str  # the answer the log says is right (liked, or given by a correction)
    who: str


def stream(path: Path, n: int, seed: int) -> list[Request]:
    """Requests whose right answer the log tells: a liked answer, or a correction's."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        msgs = rec["messages"]
        user = next((m["content"] for m in msgs if m["role"] == "user"), None)
        answers = [(i, m["content"]) for i, m in enumerate(msgs) if m["role"] == "assistant"]
        liked = {f.get("turn") for f in rec.get("feedback", []) if f.get("kind") == "like"}
        right = next((a for i, a in reversed(answers) if i in liked), None)
        right = right or next((f["text"] for f in rec.get("feedback", []) if f.get("kind") == "correction"
                               and f.get("text")), None)
        if user and right:
            out.append(Request(user, right, str(rec.get("user") or "anonymous")))
    random.Random(seed).shuffle(out)
    if len(out) < n:
        raise ValueError(f"{path}: {len(out)} requests with a known right answer, asked for {n}")
    return out[:n]


class SimulatedUser:
    """Rates an answer against the right one, with the noise of real logs."""

    def __init__(self, p_missing: float, p_wrong: float, p_correct: float, seed: int) -> None:
        self.p_missing, self.p_wrong, self.p_correct = p_missing, p_wrong, p_correct
        self.rng = random.Random(seed)

    def rate(self, answer: str, right: str) -> tuple[str, str | None] | None:
        from logmem.model.evaluate import is_correct

        if self.rng.random() < self.p_missing:
            return None
        ok = is_correct(answer, [right])
        if self.rng.random() < self.p_wrong:
            ok = not ok
        if ok:
            return "like", None
        return ("correction", right) if self.rng.random() < self.p_correct else ("dislike", None)


def accuracy(runtime: Any, items: list[Any], modes: tuple[str, ...], tenant: str, max_tokens: int,
             adapter: str | None = None) -> dict[str, float]:
    from logmem.model.config import GeneratorConfig
    from logmem.model.evaluate import evaluate

    model, tokenizer = runtime.load_model_copy()
    config = GeneratorConfig(k=runtime.settings.k, template=runtime.settings.template)
    results = evaluate(model, tokenizer, runtime.memory, items, modes=modes, config=config, tenant=tenant,
                       max_new_tokens=max_tokens, adapter=adapter, batch_size=8)
    return {r.mode: r.accuracy for r in results}


def run(args: argparse.Namespace, model: Path, home: Path) -> dict[str, Any]:
    from logmem.api.runtime import Caller, Runtime
    from logmem.api.settings import Settings
    from logmem.model.evaluate import is_correct, read_eval

    requests = stream(Path(args.logs), args.requests, args.seed)
    items = read_eval(args.eval)[:args.n_eval]
    params = {"max_steps": args.max_steps, "seed": args.seed}
    runtime = Runtime(Settings(home=home, model=str(model), worker=False, consolidate_after=args.consolidate_after,
                               consolidate_params=params))
    caller = Caller("learning", None)
    user = SimulatedUser(args.p_missing, args.p_wrong, args.p_correct, args.seed)
    points: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    served = {"right": 0, "rated": 0, "kinds": {}}
    base = accuracy(runtime, items, ("base",), caller.tenant, args.max_tokens)["base"]
    try:
        for n, req in enumerate(tqdm(requests, desc="stream", unit="req"), start=1):
            answer = runtime.chat(caller, [{"role": "user", "content": req.user}], user=req.who,
                                  max_tokens=args.max_tokens)
            served["right"] += is_correct(answer.reply.text, [req.right])
            rating = user.rate(answer.reply.text, req.right)
            if rating is not None:
                kind, text = rating
                runtime.feedback(caller, answer.reply.interaction_id, kind, text=text)
                served["rated"] += 1
                served["kinds"][kind] = served["kinds"].get(kind, 0) + 1
            for job_id in runtime.queue_due():  # the periodic policy, as the server's worker applies it
                done = runtime.run_job(job_id)
                adapter = runtime.memory.active_adapter(caller.tenant)
                jobs.append({"after": n, "job": job_id, "status": done.status, "metrics": done.metrics,
                             "active": adapter.version if adapter else None})
                logger.info("job %d after %d requests: %s (active %s)", job_id, n, done.status, jobs[-1]["active"])
            if n % args.every == 0 or n == len(requests):
                adapter = runtime.memory.active_adapter(caller.tenant)
                modes = MEMORY_MODES + (ADAPTER_MODES if adapter else ())
                acc = accuracy(runtime, items, modes, caller.tenant, args.max_tokens,
                               adapter=adapter.path if adapter else None)
                stats = runtime.memory.stats(caller.tenant)
                points.append({"interactions": n, "accuracy": {"base": base, **acc},
                               "experiences": stats.experiences, "adapter": adapter.version if adapter else None,
                               "served_right_so_far": served["right"] / n})
                logger.info("after %d: %s", n, {k: round(v, 3) for k, v in points[-1]["accuracy"].items()})
    finally:
        runtime.close()
    return {"points": points, "jobs": jobs, "served": served, "eval_items": len(items), "requests": len(requests)}


def write(out: Path, result: dict[str, Any]) -> str:
    modes = ["base", *MEMORY_MODES, *ADAPTER_MODES]
    a = result["args"]
    lines = ["# The learning curve: accuracy on held-out questions as users rate the answers", "",
             f"Stream: {result['requests']} requests from {a['logs']} answered by the bundled model (max "
             f"{a['max_tokens']} new tokens); simulated user: {a['p_missing']:.0%} of answers not rated, "
             f"{a['p_wrong']:.0%} of ratings wrong, a wrong answer corrected with probability {a['p_correct']:.0%}; "
             f"policy: consolidate after {a['consolidate_after']} new experiences (sft, max {a['max_steps']} "
             f"steps). Held out: the first {result['eval_items']} items of {a['eval']}. "
             f"{result['environment']['cores']} cores; run {result['wall_s'] / 60:.1f} min{result['mode']}.", "",
             "| interactions | experiences | adapter | " + " | ".join(modes) + " |",
             "|---|---|---|" + "---|" * len(modes)]
    for p in result["points"]:
        acc = p["accuracy"]
        lines.append(f"| {p['interactions']} | {p['experiences']} | {p['adapter'] or '-'} | " + " | ".join(
            f"{acc[m]:.3f}" if m in acc else "-" for m in modes) + " |")
    lines += ["", "Consolidation jobs:", ""]
    lines += [f"- after {j['after']} requests: job {j['job']} {j['status']}, active adapter "
              f"{j['active'] or 'none'}" for j in result["jobs"]] or ["- none ran"]
    s = result["served"]
    lines += ["", f"Served answers right while streaming: {s['right']}/{result['requests']}; rated {s['rated']} "
              f"({s['kinds']}).", ""]
    text = "\n".join(lines)
    (out / "learning.md").write_text(text)
    return text


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = [p["interactions"] for p in result["points"]]
    for mode in ("base", *MEMORY_MODES, *ADAPTER_MODES):
        pts = [(p["interactions"], p["accuracy"][mode]) for p in result["points"] if mode in p["accuracy"]]
        if pts:
            ax.plot(*zip(*pts), "o-", label=mode)
    for j in result["jobs"]:
        ax.axvline(j["after"], color="grey", ls=":", lw=1)
        ax.annotate(f"job {j['job']}: {j['status']}", (j["after"], 0.02), rotation=90, fontsize=7, color="grey")
    ax.set(xlabel="interactions seen", ylabel="held-out accuracy", ylim=(0, 1), xlim=(0, max(xs or [1]) * 1.05),
           title="learning from users' ratings (dotted: consolidation jobs)")
    save_figure(fig, [ax], path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", default="data/nfcats/logs.jsonl",
                   help="native-schema JSONL: the stream's requests and right answers (default: %(default)s)")
    p.add_argument("--eval", default="data/nfcats/test.eval.jsonl",
                   help="eval JSONL ({messages, reference}): the fixed held-out set (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--quick", action="store_true", help=f"CI sizes: {QUICK}")
    for name, value in FULL.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None, help=f"default {value}")
    p.add_argument("--p-missing", type=float, default=0.3, help="share of answers nobody rates")
    p.add_argument("--p-wrong", type=float, default=0.05, help="share of ratings that are wrong")
    p.add_argument("--p-correct", type=float, default=0.5, help="chance that a wrong answer is corrected")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="a converted model folder (default: convert the bundled GGUF into --cache)")
    p.add_argument("--cache", default="benchmarks/results/cache", help="where the converted model is kept")
    args = p.parse_args(argv)
    return sized(args, FULL, QUICK)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.model:
        model = Path(args.model)
    else:
        from logmem.model.loading import bundled_gguf_path, convert_gguf

        model = convert_gguf(bundled_gguf_path(), home=Path(args.cache))
    home = Path(tempfile.mkdtemp(prefix="logmem-learning-"))
    started = time.perf_counter()
    try:
        result = run(args, model, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result.update({"args": vars(args), "wall_s": time.perf_counter() - started, "mode": " (--quick)" * args.quick,
                   "environment": {"python": platform.python_version(), "cores": os.cpu_count()}})
    (out / "learning.json").write_text(json.dumps(result, indent=1, default=str))
    print(write(out, result))
    plot(out / "learning.png", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
