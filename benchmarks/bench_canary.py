"""Does the canary's decision rule promote a better adapter, roll back a worse one and leave an equal one to the
offline gate, and how many requests does it take, against the share of traffic the canary gets?

    python benchmarks/bench_canary.py --out benchmarks/results [--quick]

Simulated users, no model: each tenant request's conversation is answered by the canary arm with probability
`share` (the hash assignment itself, `assign_arm`, is checked separately on 100,000 ids per share); a request is
rated with probability `--rated`; a rated answer is good with the arm's like-rate. The current arm's like-rate is
0.70: the NFCats vote's test accuracy, 0.723 (`results/quality_test.md`), as `bench_learning`'s simulated user rates
it (5% of ratings wrong: 0.723 * 0.90 + 0.05). The cases move the canary by 0.10, about the gap between the memory
(0.644) and the vote (0.723) on that test, a real but not a large change: better 0.80, worse 0.60, the same 0.70,
and slightly better 0.75 (half that gap: where the power runs out, reported, not tuned for).

Each canary is `first_decision` (memory/canary.py) over its stream, looked at after every rated outcome, with the
rule's defaults (`CanaryConfig`) unless `--budget` / `--min-outcomes` say otherwise. Per case and share: the share of
canaries promoted, rolled back and undecided at the budget, and the rated requests (both arms), the canary's rated
requests and the tenant's requests (rated or not) until the verdict, median and p90 over all canaries (an undecided
one counts at its budget: how long a canary stays live). A one-sided z-test at 5% looked at after every outcome, on
the same equal streams, shows what the e-values guard against. A budget sweep for the better case says why the
budget is what it is. Writes `canary.json`, `canary.md` and `canary.png` (`canary_quick.*` under --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save_figure, sized  # noqa: E402
from logmem.memory.canary import CanaryConfig, assign_arm, first_decision  # noqa: E402

CURRENT = 0.70
CASES = {"better": 0.80, "worse": 0.60, "same": 0.70, "slightly better": 0.75}
FULL = {"runs": 1000, "shares": "0.05,0.1,0.25,0.5", "sweep_runs": 300, "hash_ids": 100_000}
QUICK = {"runs": 40, "shares": "0.1,0.5", "sweep_runs": 20, "hash_ids": 2_000}


def one_canary(p_canary: float, share: float, rated: float, config: CanaryConfig,
               rng: np.random.Generator) -> dict[str, Any]:
    """One canary's verdict and the requests it took: a stream of rated requests long enough to spend the budget
    (extended if the canary's draw was short), and the tenant's requests behind its rated ones (negative binomial)."""
    n = int(config.budget / share * 1.2) + 200
    canary = np.empty(0, dtype=bool)
    while canary.sum() < config.budget:
        canary = np.concatenate([canary, rng.random(n) < share])
    outcome = (rng.random(canary.size) < np.where(canary, p_canary, CURRENT)).astype(np.float64)
    d = first_decision(canary, outcome, config)
    return {"verdict": d.verdict, "rated": d.rated, "canary_rated": int(d.canary.n),
            "tenant": d.rated + int(rng.negative_binomial(d.rated, rated))}


def peeked_z_promotes(share: float, config: CanaryConfig, runs: int, rng: np.random.Generator) -> float:
    """The share of equal-arm streams a one-sided z-test at 5%, looked at after every outcome once both arms have
    `min_outcomes`, would promote before the budget."""
    hits = 0
    for _ in range(runs):
        n = int(config.budget / share)
        canary = rng.random(n) < share
        y = (rng.random(n) < CURRENT).astype(np.float64)
        nc, na = np.cumsum(canary), np.cumsum(~canary)
        gc, ga = np.cumsum(y * canary), np.cumsum(y * ~canary)
        ok = (nc >= config.min_outcomes) & (na >= config.min_outcomes)
        pooled = (gc + ga) / (nc + na)
        se = np.sqrt(np.maximum(pooled * (1 - pooled), 1e-12) * (1 / np.maximum(nc, 1) + 1 / np.maximum(na, 1)))
        hits += bool((ok & ((gc / np.maximum(nc, 1) - ga / np.maximum(na, 1)) / se >= 1.645)).any())
    return hits / runs


def clustered(p_canary: float, share: float, config: CanaryConfig, runs: int, rng: np.random.Generator,
              concentration: float = 2.0, mean_turns: float = 3.0) -> dict[str, float]:
    """Users who rate several answers of one conversation alike: each conversation has its own like-propensity
    (Beta with the arm's mean and `concentration`: an intra-conversation correlation of 1 / (1 + concentration)) and
    a geometric number of rated turns (mean `mean_turns`). The share of canaries promoted and rolled back when every
    rated turn counts as an outcome, and when each conversation counts once (the mean of its turns)."""
    out = {"per turn: promoted": 0.0, "per turn: rolled back": 0.0,
           "per conversation: promoted": 0.0, "per conversation: rolled back": 0.0}
    n = int(config.budget / share * 1.2) + 200
    for _ in range(runs):
        arm = rng.random(n) < share
        p = np.where(arm, p_canary, CURRENT)
        propensity = rng.beta(p * concentration, (1 - p) * concentration)
        turns = rng.geometric(1 / mean_turns, n)
        y = (rng.random(turns.sum()) < np.repeat(propensity, turns)).astype(np.float64)  # turn by turn
        per_turn = first_decision(np.repeat(arm, turns), y, config)
        starts = np.r_[0, np.cumsum(turns)[:-1]]
        per_conversation = first_decision(arm, np.add.reduceat(y, starts) / turns, config)
        for name, d in (("per turn", per_turn), ("per conversation", per_conversation)):
            out[f"{name}: promoted"] += (d.verdict == "promote") / runs
            out[f"{name}: rolled back"] += (d.verdict == "rollback") / runs
    return out


def drifting(share: float, config: CanaryConfig, runs: int, rng: np.random.Generator, start: float = 0.55,
             end: float = 0.85) -> dict[str, float]:
    """Equal arms whose common like-rate moves from `start` to `end` over the stream that spends the budget (a
    changing mix of questions, users growing used to the model): the share of canaries promoted and rolled back."""
    n = int(config.budget / share) + 200
    p = np.linspace(start, end, n)
    verdicts = [first_decision(rng.random(n) < share, (rng.random(n) < p).astype(np.float64), config).verdict
                for _ in range(runs)]
    return {"promoted": verdicts.count("promote") / runs, "rolled back": verdicts.count("rollback") / runs}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(rows)}
    for v in ("promote", "rollback", "no_decision"):
        out[v] = sum(r["verdict"] == v for r in rows) / len(rows)
    for key in ("rated", "canary_rated", "tenant"):
        xs = np.array([r[key] for r in rows])
        out[f"{key}_p50"], out[f"{key}_p90"] = float(np.median(xs)), float(np.percentile(xs, 90))
    return out


def hash_shares(shares: list[float], n: int) -> dict[str, float]:
    """The share of `n` conversation ids `assign_arm` gives the canary, for each share."""
    ids = [f"tenant-a/conversation-{i}" for i in range(n)]
    return {str(s): sum(assign_arm(c, s, salt="canary-v1") == "canary" for c in ids) / n for s in shares}


def run(args: argparse.Namespace) -> dict[str, Any]:
    shares = [float(s) for s in args.shares.split(",")]
    base = CanaryConfig()
    overrides = {k: v for k, v in (("budget", args.budget), ("min_outcomes", args.min_outcomes)) if v is not None}
    rng = np.random.default_rng(args.seed)
    cells: dict[str, dict[str, Any]] = {}
    for case, p in CASES.items():
        for share in shares:
            config = replace(base, share=share, **overrides)
            rows = [one_canary(p, share, args.rated, config, rng) for _ in range(args.runs)]
            cells[f"{case}@{share}"] = {"case": case, "p_canary": p, "share": share, **summarize(rows)}
    config = replace(base, **overrides)
    peeked = {str(s): peeked_z_promotes(s, replace(config, share=s), args.runs, rng) for s in shares}
    sweep = {}
    for budget in (500, 1000, 1500, 2000):
        for share in (min(shares), max(shares)):
            c = replace(config, share=share, budget=budget)
            rows = [one_canary(CASES["better"], share, args.rated, c, rng) for _ in range(args.sweep_runs)]
            sweep[f"{budget}@{share}"] = {"budget": budget, "share": share, **summarize(rows)}
    correlated = {f"{case}@{share}": {"case": case, "share": share,
                                      **clustered(CASES[case], share, replace(config, share=share), args.sweep_runs,
                                                  rng)}
                  for case in ("same", "better") for share in (min(shares), max(shares))}
    drift = {str(s): drifting(s, replace(config, share=s), args.sweep_runs, rng) for s in (min(shares), max(shares))}
    return {"config": asdict(config), "cells": cells, "peeked_z": peeked, "sweep": sweep, "clustered": correlated,
            "drift": drift,
            "hash_shares": hash_shares(shares, args.hash_ids)}


def done_when(result: dict[str, Any]) -> dict[str, bool]:
    """The issue's figures: a worse canary promoted in <= 5%, a better one in >= 90%, at every share."""
    cells = result["cells"].values()
    return {"worse promoted <= 5%": all(c["promote"] <= 0.05 for c in cells if c["case"] == "worse"),
            "better promoted >= 90%": all(c["promote"] >= 0.90 for c in cells if c["case"] == "better")}


def write_markdown(out: Path, result: dict[str, Any], name: str) -> str:
    c, a = result["config"], result["args"]
    lines = ["# Canary adapters: does the users' feedback decide right, and how soon?", "",
             f"`{result['command']}` · {result['environment']['cores']} cores · load average "
             f"{result['load_avg_start']:.2f} -> {result['load_avg_end']:.2f} · {result['wall_s']:.0f} s", "",
             f"Simulated users, no model: current arm like-rate {CURRENT:.2f}; {a['rated']:.0%} of tenant requests "
             f"rated; {a['runs']} canaries per cell, each looked at after every rated outcome. Rule "
             f"(`CanaryConfig`): promote at e-value >= {1 / c['alpha_promote']:g} (alpha {c['alpha_promote']}), roll "
             f"back at >= {1 / c['alpha_rollback']:g} (alpha {c['alpha_rollback']}), both arms at least "
             f"{c['min_outcomes']} rated outcomes, budget {c['budget']} rated canary outcomes, Beta({c['prior']:g}, "
             f"{c['prior']:g}) mixtures. Requests to a verdict: median / p90 over all canaries (an undecided one at "
             "its budget).", "",
             "| case | canary rate | share | promoted | rolled back | no decision | rated requests | canary rated "
             "| tenant requests |", "|---|---|---|---|---|---|---|---|---|"]
    for x in result["cells"].values():
        lines.append(f"| {x['case']} | {x['p_canary']:.2f} | {x['share']:.0%} | {x['promote']:.1%} | "
                     f"{x['rollback']:.1%} | {x['no_decision']:.1%} | {x['rated_p50']:,.0f} / {x['rated_p90']:,.0f} | "
                     f"{x['canary_rated_p50']:,.0f} / {x['canary_rated_p90']:,.0f} | {x['tenant_p50']:,.0f} / "
                     f"{x['tenant_p90']:,.0f} |")
    lines += ["", "Done when (issue 29): " + "; ".join(f"{k}: {'yes' if v else 'NO'}"
                                                      for k, v in result["done_when"].items()) + ".", "",
              "Equal arms, looked at after every outcome: promoted by the e-value rule (above) against a one-sided "
              "z-test at 5% on the same kind of streams:", "",
              "| share | e-values: promoted | peeked z-test: promoted |", "|---|---|---|"]
    for s, z in result["peeked_z"].items():
        same = result["cells"][f"same@{float(s)}"]
        lines.append(f"| {float(s):.0%} | {same['promote']:.1%} | {z:.1%} |")
    lines += ["", f"Why the budget: the better case ({CASES['better']:.2f}) at the smallest and largest share, "
              f"{a['sweep_runs']} canaries each:", "",
              "| budget (canary rated) | share | promoted | no decision | rated requests p50 | tenant requests p50 |",
              "|---|---|---|---|---|---|"]
    for x in result["sweep"].values():
        lines.append(f"| {x['budget']} | {x['share']:.0%} | {x['promote']:.1%} | {x['no_decision']:.1%} | "
                     f"{x['rated_p50']:,.0f} | {x['tenant_p50']:,.0f} |")
    lines += ["", "Users who rate several answers of one conversation alike (own like-propensity per conversation, "
              "Beta with the arm's mean and concentration 2: intra-conversation correlation 0.33; 3 rated turns on "
              f"average), {a['sweep_runs']} canaries each: every rated turn an outcome, or each conversation once "
              "(the mean of its turns):", "",
              "| case | share | per turn: promoted | per turn: rolled back | per conversation: promoted | "
              "per conversation: rolled back |", "|---|---|---|---|---|---|"]
    for x in result["clustered"].values():
        lines.append(f"| {x['case']} | {x['share']:.0%} | {x['per turn: promoted']:.1%} | "
                     f"{x['per turn: rolled back']:.1%} | {x['per conversation: promoted']:.1%} | "
                     f"{x['per conversation: rolled back']:.1%} |")
    lines += ["", f"Equal arms whose common like-rate drifts from 0.55 to 0.85 over the stream, {a['sweep_runs']} "
              "canaries each: " + ", ".join(f"share {float(s):.0%}: promoted {x['promoted']:.1%}, rolled back "
                                            f"{x['rolled back']:.1%}" for s, x in result["drift"].items()) + "."]
    lines += ["", f"The hash assignment (`assign_arm`, {a['hash_ids']:,} conversation ids): "
              + ", ".join(f"share {float(s):.0%} -> {v:.2%}" for s, v in result["hash_shares"].items()) + "."]
    text = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    return text


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    shares: list[float] = []
    for color, case in zip(("tab:green", "tab:red", "tab:grey", "tab:blue"), CASES):
        cells = sorted((x for x in result["cells"].values() if x["case"] == case), key=lambda x: x["share"])
        shares = [x["share"] for x in cells]
        left.plot(shares, [x["promote"] for x in cells], "o-", color=color, label=f"{case}: promoted")
        if case in ("worse", "slightly better"):
            left.plot(shares, [x["rollback"] for x in cells], "x--", color=color, label=f"{case}: rolled back")
        if case != "same":
            right.errorbar(shares, [x["tenant_p50"] for x in cells],
                           yerr=[[0] * len(cells), [x["tenant_p90"] - x["tenant_p50"] for x in cells]], fmt="o-",
                           color=color, capsize=3, label=f"{case}: tenant requests")
            right.plot(shares, [x["rated_p50"] for x in cells], "s:", color=color, label=f"{case}: rated requests")
    left.axhline(0.9, color="grey", lw=0.8, ls=":")
    left.axhline(0.05, color="grey", lw=0.8, ls=":")
    left.set(xscale="log", xlabel="canary share of conversations", ylabel="share of canaries", ylim=(-0.02, 1.02),
             title="verdicts (dotted: 0.90 and 0.05)")
    right.set(xscale="log", yscale="log", xlabel="canary share of conversations",
              ylabel="requests to a verdict (median; bar to p90)", title="how long a canary runs")
    for ax in (left, right):
        ax.set_xticks(shares, [f"{s:.0%}" for s in shares])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
    save_figure(fig, [left, right], path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--runs", type=int, default=None, help=f"canaries per case and share (default {FULL['runs']})")
    parser.add_argument("--shares", default=None, help=f"comma-separated (default {FULL['shares']})")
    parser.add_argument("--sweep-runs", type=int, default=None)
    parser.add_argument("--hash-ids", type=int, default=None)
    parser.add_argument("--rated", type=float, default=0.3, help="share of tenant requests rated")
    parser.add_argument("--budget", type=int, default=None, help="override CanaryConfig.budget")
    parser.add_argument("--min-outcomes", type=int, default=None, help="override CanaryConfig.min_outcomes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help=f"small counts (CI): {QUICK}")
    args = sized(parser.parse_args(argv), FULL, QUICK)
    args.out.mkdir(parents=True, exist_ok=True)
    load_start, t0 = os.getloadavg()[0], time.perf_counter()
    result = run(args)
    result.update({"command": "python benchmarks/bench_canary.py " + " ".join(argv if argv is not None
                                                                             else sys.argv[1:]),
                   "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "environment": {"python": platform.python_version(), "cores": os.cpu_count()},
                   "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0],
                   "wall_s": time.perf_counter() - t0})
    result["done_when"] = done_when(result)
    name = "canary_quick" if args.quick else "canary"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(write_markdown(args.out, result, name))
    plot(args.out / f"{name}.png", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
