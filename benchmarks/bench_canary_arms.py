"""Canaries of real adapters: does the users' feedback promote an adapter that is really better, roll back one that
is really worse and leave an equal one alone?

    python benchmarks/bench_canary_arms.py --out benchmarks/results [--quick]

`bench_canary.py` decides between arms of given like-rates. Here the arms are real: a tenant holds NFCats' liked
interactions (`--records`), answered by the bundled model (float32) in the memory mode (the current arm), and three
candidate adapters are trained for it with the consolidation's own trainer (`train_adapter`, a memory+adapter
student, `--steps` steps):

- **better**: on the tenant's own experiences (the right labels);
- **worse**: on the same requests with every label replaced by the next one in the label set (the wrong labels);
- **same**: no steps at all (LoRA's B matrices start at zero: the same answers as the current arm, by construction).

Each arm answers the first `--n-eval` questions of `--eval` through the runtime's answer operation (`Runtime.answer`,
nothing logged) and each answer is right or wrong by the eval's references: a per-question table of real outcomes.
Then `--runs` canaries per case and share run as `bench_learning`'s simulated users would drive them: each request
is a question drawn at random, its conversation's arm drawn by `assign_arm` (the hash the service uses), its answer
the arm's real answer to that question, rated with probability `--rated`, the rating wrong with probability
`--p-wrong` (like a real user's slip), decided by `first_decision` after every rated outcome (the service's rule,
`CanaryConfig` defaults). Before the simulation, `--replay` canaries per case run through the memory's own canary
path (answers logged with their arm, feedback through `VectorMemory.feedback`, the decision taken from SQL) on the
same kind of stream, to show the service decides as the simulation does. Writes `canary_arms.{json,md,png}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from common import save_figure, sized  # noqa: E402
from logmem.memory.canary import CanaryConfig, assign_arm, first_decision  # noqa: E402
from tqdm import tqdm  # noqa: E402

FULL = {"records": 300, "n_eval": 100, "steps": 40, "runs": 300, "shares": "0.05,0.1,0.25,0.5", "replay": 1}
QUICK = {"records": 24, "n_eval": 6, "steps": 1, "runs": 20, "shares": "0.5", "replay": 1}
CASES = ("better", "worse", "same")
TENANT = "arms"


def liked_records(path: Path, n: int) -> list[dict[str, Any]]:
    """The first `n` records of `path` whose answer was liked."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if any(f.get("kind") == "like" for f in record.get("feedback", [])):
            out.append(record)
        if len(out) == n:
            break
    return out


def relabelled(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with each answer replaced by the next label of the sorted label set (every label wrong)."""
    labels = sorted({m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"})
    after = {a: labels[(i + 1) % len(labels)] for i, a in enumerate(labels)}
    return [{**r, "id": f"wrong-{r['id']}", "messages": [
        {**m, "content": after[m["content"]]} if m["role"] == "assistant" else m for m in r["messages"]]}
        for r in records]


def train(runtime: Any, tenant: str, steps: int, folder: Path, seed: int, batch_size: int) -> Path:
    """A memory+adapter student trained `steps` steps on the tenant's experiences (0: none), saved as PEFT does."""
    from logmem.model.config import ConsolidationConfig
    from logmem.model.pairs import build_pairs
    from logmem.model.training import attach_adapter, train_adapter

    model, tokenizer = runtime.load_model_copy()
    config = ConsolidationConfig(with_memory=True, max_steps=max(steps, 1), seed=seed, batch_size=batch_size)
    if steps:
        experiences = list(runtime.memory.store.iter_experiences(tenant=tenant))
        pairs = build_pairs(experiences, tokenizer, runtime.memory, tenant, config, progress=True)
        peft_model, _ = train_adapter(model.float(), tokenizer, pairs, config, progress=True)
    else:
        peft_model = attach_adapter(model.float(), config)
    peft_model.save_pretrained(str(folder))
    return folder


def answers(runtime: Any, items: list[Any], arm: str, version: str | None, max_tokens: int) -> np.ndarray:
    """Whether the arm's answer to each item is right: the current arm in the memory mode on the base model, a
    candidate in memory+adapter with its adapter active."""
    from logmem.api.answering import SERVED_MODEL, Ask, Caller
    from logmem.model.evaluate import is_correct

    caller = Caller(TENANT, None)
    if version is not None:
        runtime.memory.activate_adapter(version, tenant=TENANT)
    right = []
    for item in tqdm(items, desc=f"answers ({arm})", unit="q"):
        answer = runtime.answer(caller, Ask(item.messages, model=SERVED_MODEL, max_tokens=max_tokens, log=False,
                                            mode="memory" if version is None else "memory+adapter"))
        right.append(is_correct(answer.reply.text, item.reference))
    return np.array(right, dtype=bool)


def stream(table: dict[str, np.ndarray], case: str, share: float, rated: float, p_wrong: float,
           config: CanaryConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """One canary's rated outcomes: (the canary answered, the outcome) per rated request, long enough to spend the
    budget, and the tenant requests behind them."""
    n = int(config.budget / (share * rated) * 1.3) + 400
    conversations = [uuid.UUID(int=int(x)).hex for x in rng.integers(0, 2**63, size=n)]
    salt = f"v-{case}-{rng.integers(1 << 30)}"
    canary = np.array([assign_arm(c, share, salt) == "canary" for c in conversations])
    questions = rng.integers(0, len(table["current"]), size=n)
    right = np.where(canary, table[case][questions], table["current"][questions])
    slip = rng.random(n) < p_wrong
    outcome = (right ^ slip).astype(np.float64)
    keep = rng.random(n) < rated
    return canary[keep], outcome[keep], n


def replay(memory: Any, version: str, canary: np.ndarray, outcome: np.ndarray, config: CanaryConfig) -> str:
    """The same rated stream through the memory's canary path: each answer logged on its arm, rated by feedback,
    decided from SQL; returns the verdict the service reached ("continue" where the stream ran out)."""
    from logmem.memory.canaries import served_as

    live = memory.canaries.start(version, tenant=TENANT, share=0.5, mode="memory+adapter", config=config)
    for i, (on_canary, y) in enumerate(zip(canary, outcome)):
        arm = "canary" if on_canary else "current"
        iid = f"replay-{live.id}-{i}"
        memory.log_answer(tenant=TENANT, interaction_id=iid, messages=[{"role": "user", "content": iid}],
                          answer="x", hits=[], details={"canary": served_as(live, arm, iid)})
        memory.feedback(iid, "like" if y else "dislike", tenant=TENANT)
        ended = memory.store.get_canary(tenant=TENANT, canary_id=live.id)
        if ended.status != "live":
            return str(ended.decision["verdict"] if ended.decision else ended.status)
    memory.canaries.stop(TENANT, reason="the replayed stream ran out")
    return "continue"


def run(args: argparse.Namespace, model: Path, home: Path) -> dict[str, Any]:
    from logmem.api.runtime import Runtime
    from logmem.api.settings import Settings
    from logmem.model.evaluate import read_eval

    records = liked_records(args.logs, args.records)
    items = read_eval(args.eval)[:args.n_eval]
    runtime = Runtime(Settings(home=home, model=str(model), worker=False, generation_threads=args.threads))
    memory = runtime.memory
    try:
        memory.ingest(records, tenant=TENANT)
        memory.ingest(relabelled(records), tenant="wrong-labels")
        trained = {"better": (TENANT, args.steps), "worse": ("wrong-labels", args.steps), "same": (TENANT, 0)}
        versions: dict[str, str] = {}
        t0 = time.perf_counter()
        for case, (source, steps) in trained.items():
            folder = train(runtime, source, steps, home / f"adapter-{case}", args.seed, args.batch_size)
            versions[case] = memory.store.add_adapter(
                tenant=TENANT, base_model=runtime.base_model, method="sft", seed=args.seed, status="promoted",
                metrics={"trained_on": source, "steps": steps}, covered=[], path=str(folder))
        train_s = time.perf_counter() - t0
        table = {"current": answers(runtime, items, "current", None, args.max_tokens)}
        for case in CASES:
            table[case] = answers(runtime, items, case, versions[case], args.max_tokens)
        if args.replay:
            memory.rollback_adapter(TENANT)
            while memory.active_adapter(TENANT) is not None:
                memory.rollback_adapter(TENANT)
        config = CanaryConfig()
        rng = np.random.default_rng(args.seed)
        cells, replays = [], []
        for case in CASES:
            for share in [float(s) for s in args.shares.split(",")]:
                verdicts, rated, tenant = [], [], []
                for _ in tqdm(range(args.runs), desc=f"canaries ({case}, {share:.0%})", unit="canary"):
                    canary, outcome, n = stream(table, case, share, args.rated, args.p_wrong, config, rng)
                    d = first_decision(canary, outcome, config)
                    verdicts.append(d.verdict)
                    rated.append(d.rated)
                    tenant.append(int(round(d.rated / max(len(canary), 1) * n)))
                cells.append({"case": case, "share": share, "runs": args.runs,
                              **{v: verdicts.count(v) / len(verdicts) for v in ("promote", "rollback", "no_decision")},
                              "rated_p50": float(np.median(rated)), "tenant_p50": float(np.median(tenant))})
            for _ in range(args.replay):  # the service's own path on one stream, beside the simulation's verdict
                canary, outcome, _ = stream(table, case, 0.5, 1.0, args.p_wrong, config, rng)
                expected = first_decision(canary, outcome, config)
                got = replay(memory, versions[case], canary[:expected.rated], outcome[:expected.rated], config)
                replays.append({"case": case, "simulated": expected.verdict, "service": got,
                                "rated": expected.rated})
    finally:
        runtime.close()
    accuracy = {arm: float(v.mean()) for arm, v in table.items()}
    return {"accuracy": accuracy, "n_eval": len(items), "records": len(records), "steps": args.steps,
            "batch_size": args.batch_size,
            "train_s": train_s, "cells": cells, "replays": replays, "rated": args.rated, "p_wrong": args.p_wrong,
            "config": {k: getattr(config, k) for k in ("alpha_promote", "alpha_rollback", "min_outcomes", "budget")}}


def done_when(result: dict[str, Any]) -> dict[str, bool]:
    cells = result["cells"]
    return {"worse promoted <= 5%": all(c["promote"] <= 0.05 for c in cells if c["case"] == "worse"),
            "better promoted >= 90%": all(c["promote"] >= 0.90 for c in cells if c["case"] == "better"),
            "the service decides as the simulation": all(r["simulated"] == r["service"] for r in result["replays"])}


def write_markdown(result: dict[str, Any], name: str, out: Path) -> str:
    acc = result["accuracy"]
    lines = [f"# Canaries of real adapters: {name}", "",
             f"`{result['command']}` · {result['environment']['cores']} cores · load average "
             f"{result['load_avg_start']:.2f} -> {result['load_avg_end']:.2f} · {result['wall_s']:.0f} s "
             f"(training {result['train_s']:.0f} s)", "",
             f"A tenant of {result['records']} liked NFCats interactions; the bundled model (float32). Accuracy of "
             f"each arm's real answers on the first {result['n_eval']} test questions, through `Runtime.answer`: "
             f"current (memory mode, base model) {acc['current']:.3f}; better (memory+adapter trained "
             f"{result['steps']} steps, batch {result['batch_size']}, on the right labels) {acc['better']:.3f}; worse "
             f"(the same on every label shifted to the next) {acc['worse']:.3f}; same (an adapter of zero steps) "
             f"{acc['same']:.3f}.", "",
             f"Simulated users on those answers: {result['rated']:.0%} of requests rated, {result['p_wrong']:.0%} of "
             f"ratings wrong; rule: {json.dumps(result['config'])}.", "",
             "| case | share | canaries | promoted | rolled back | no decision | rated requests p50 "
             "| tenant requests p50 |",
             "|---|---|---|---|---|---|---|---|"]
    for c in result["cells"]:
        lines.append(f"| {c['case']} | {c['share']:.0%} | {c['runs']} | {c['promote']:.1%} | {c['rollback']:.1%} | "
                     f"{c['no_decision']:.1%} | {c['rated_p50']:,.0f} | {c['tenant_p50']:,.0f} |")
    if result["replays"]:
        lines += ["", "The service's own canary path (answers logged on their arm, `VectorMemory.feedback`, the "
                  "decision from SQL) on one stream per case at a 50% share, against the simulation's verdict:", "",
                  "| case | simulated | service | rated |", "|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['simulated']} | {r['service']} | {r['rated']} |" for r in result["replays"]]
    lines += ["", "Done when (issue 29): " + "; ".join(f"{k}: {'yes' if v else 'no'}"
                                                     for k, v in result["done_when"].items()), ""]
    text = "\n".join(lines)
    (out / f"{name}.md").write_text(text)
    return text


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for color, case in zip(("tab:green", "tab:red", "tab:grey"), CASES):
        cells = sorted((c for c in result["cells"] if c["case"] == case), key=lambda c: c["share"])
        shares = [c["share"] for c in cells]
        left.plot(shares, [c["promote"] for c in cells], "o-", color=color, label=f"{case}: promoted")
        left.plot(shares, [c["rollback"] for c in cells], "x--", color=color, label=f"{case}: rolled back")
        right.plot(shares, [c["tenant_p50"] for c in cells], "o-", color=color, label=f"{case}: tenant requests")
    left.set(xscale="log", xlabel="canary share of conversations", ylabel="share of canaries", ylim=(-0.02, 1.02),
             title="verdicts on real adapters' answers")
    right.set(xscale="log", yscale="log", xlabel="canary share of conversations", ylabel="tenant requests (median)",
              title="how long a canary runs")
    save_figure(fig, [left, right], path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, default=Path("data/nfcats/logs.jsonl"))
    parser.add_argument("--eval", type=Path, default=Path("data/nfcats/test.eval.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--records", type=int, default=None, help=f"liked interactions (default {FULL['records']})")
    parser.add_argument("--n-eval", type=int, default=None, help=f"questions answered by each arm ({FULL['n_eval']})")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps of each adapter ({FULL['steps']})")
    parser.add_argument("--runs", type=int, default=None, help=f"canaries per case and share ({FULL['runs']})")
    parser.add_argument("--shares", default=None, help=f"comma-separated ({FULL['shares']})")
    parser.add_argument("--replay", type=int, default=None, help="streams per case through the service's path")
    parser.add_argument("--rated", type=float, default=0.3, help="share of requests rated")
    parser.add_argument("--p-wrong", type=float, default=0.05, help="share of ratings that are wrong")
    parser.add_argument("--batch-size", type=int, default=2, help="training batch")
    parser.add_argument("--max-tokens", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="generation threads")
    parser.add_argument("--model", help="a model folder (default: the bundled model, converted into --cache)")
    parser.add_argument("--cache", default=os.environ.get("LOGMEM_MODEL_CACHE", ".logmem"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help=f"CI sizes: {QUICK}")
    args = sized(parser.parse_args(argv), FULL, QUICK)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model:
        model = Path(args.model)
    else:
        from logmem.model.loading import bundled_gguf_path, convert_gguf

        model = convert_gguf(bundled_gguf_path(), home=Path(args.cache))
    load_start, t0 = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-canary-arms-") as tmp:
        result = run(args, model, Path(tmp))
    name = "canary_arms_quick" if args.quick else "canary_arms"
    result.update({"command": "python benchmarks/bench_canary_arms.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "environment": {"python": platform.python_version(),
                                                                      "cores": os.cpu_count()},
        "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0], "wall_s": time.perf_counter() - t0})
    result["done_when"] = done_when(result)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(write_markdown(result, name, args.out))
    plot(args.out / f"{name}.png", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
