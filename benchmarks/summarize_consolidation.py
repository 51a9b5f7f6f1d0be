"""One table and one plot of every consolidation run in a results folder (the README's), from the JSON
files that `bench_consolidation.py` and `bench_quality.py` wrote.

    python benchmarks/summarize_consolidation.py --results benchmarks/results

Writes `consolidation_summary.md` and `consolidation_summary.png` there and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# logistic regression on the frozen MiniLM embeddings, NFCats test split (data/README.md)
PARAMETRIC_REFERENCE = 0.84


def _accuracy(results: list[dict[str, Any]], mode: str) -> float | None:
    found = [r for r in results if r["mode"] == mode]
    return found[0]["accuracy"] if found else None


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _eval_setup(data: dict[str, Any]) -> str:
    """How the answers were generated: the runs before batched eval used bfloat16, one question at a time."""
    if not data.get("results"):
        return "–"
    if "batch_size" not in data:
        return "bfloat16, 1 at a time"
    return f"{data.get('eval_dtype', 'float32')}, batches of {data['batch_size']}"


def runs(folder: Path) -> list[dict[str, Any]]:
    """One row per `consolidation_*_test.json`: what was trained, the gate, and the accuracies. A
    `--drop-consolidated` re-run of a kept home (`*_drop_test.json`) adds its figure to its run's row."""
    rows = []
    for path in sorted(folder.glob("consolidation_*_test.json")):
        if path.stem.endswith("_drop_test"):
            continue
        data = json.loads(path.read_text())
        results = data.get("results", [])
        dropped = path.with_name(path.stem.removesuffix("_test") + "_drop_test.json")
        if dropped.is_file():
            results = results + json.loads(dropped.read_text()).get("results", [])
        served = (data.get("serving_mode") or {}).get("mode")  # `--modes default`: the mode the job chose to serve
        results = [{**r, "mode": served} if r.get("mode") == "default" and served else r for r in results]
        params, metrics = data["params"], data["job"].get("metrics") or {}
        chosen = params.get("with_memory") is None and "with_memory" in metrics  # the job chose its student
        student = "with memory" if metrics.get("with_memory", params.get("with_memory")) else "bare"
        student += " (chosen by the job)" if chosen else ""
        if params.get("lr"):
            student += f", lr {params['lr']:g}"
        rows.append({
            "objective": params["method"] + (f" + dpo {params['dpo_weight']:g}" if params.get("dpo_weight") else ""),
            "student": student,
            # runs before the config was recorded cut prompts at 256 tokens: the teacher's and the
            # memory+adapter student's prompts (~355 tokens median) lost their start; bare ones were whole
            "cap": data.get("consolidation_config", {}).get("max_length", 256),
            "minutes": data["job_seconds"] / 60, "status": data["job"]["status"],
            "nll": (f"{metrics['base_nll']:.3f} -> {metrics['student_nll']:.3f}" if "student_nll" in metrics
                    else "–"),
            "ppl": (f"{metrics['base_probe_ppl']:.2f} -> {metrics['student_probe_ppl']:.2f}"
                    if "student_probe_ppl" in metrics else "–"),
            "eval": _eval_setup(data),
            "dev consolidated": _accuracy(data.get("dev", {}).get("results", []), "consolidated"),
            "consolidated": _accuracy(results, "consolidated"),
            "memory+adapter": _accuracy(results, "memory+adapter"),
            "dropped": _accuracy(results, "memory+adapter, consolidated out of retrieval"),
        })
    return rows


def summarize(rows: list[dict[str, Any]], quality: dict[str, float | None]) -> str:
    lines = []
    if quality:
        lines += ["Without consolidation (`bench_quality.py`, NFCats test, 480 questions): "
                  f"base {_cell(quality['base'])}, memory {_cell(quality['memory'])}, "
                  f"vote {_cell(quality['vote'])}, kNN vote {_cell(quality['knn'])}.", ""]
    lines += ["| objective | student | prompt cap | job min (2 cores) | gate | held-out NLL | probe ppl | eval | "
              "dev consolidated | test consolidated | test memory+adapter | "
              "test memory+adapter, consolidated out of retrieval |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['objective']} | {r['student']} | {r['cap']} | {r['minutes']:.1f} | {r['status']} | "
                     f"{r['nll']} | {r['ppl']} | {r['eval']} | {_cell(r['dev consolidated'])} | "
                     f"{_cell(r['consolidated'])} | {_cell(r['memory+adapter'])} | {_cell(r['dropped'])} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], quality: dict[str, float | None], path: Path) -> None:
    """Test accuracy of each promoted run, consolidated and memory+adapter, against the memory modes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["consolidated"] is not None or r["memory+adapter"] is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for offset, mode in ((-0.2, "consolidated"), (0.2, "memory+adapter")):
        ax.bar([i + offset for i in range(len(shown))], [r[mode] or 0.0 for r in shown], width=0.4, label=mode)
    refs = [("memory", quality.get("memory"), ":"), ("vote", quality.get("vote"), "-."),
            ("logistic regression", PARAMETRIC_REFERENCE, "--")]
    for name, value, style in refs:
        if value is not None:
            ax.axhline(value, color="grey", ls=style, lw=0.9, label=f"{name} {value:.3f}")
    ax.set_xticks(range(len(shown)), [f"{r['objective']}\n{r['student']}\ncap {r['cap']}" for r in shown],
                  fontsize=8)
    ax.set(ylim=(0, 1.08), ylabel="accuracy, NFCats test (480)", title="Consolidation: accuracy by objective")
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="benchmarks/results")
    args = p.parse_args()
    folder = Path(args.results)
    quality: dict[str, float | None] = {}
    if (folder / "quality_test.json").is_file():
        q = json.loads((folder / "quality_test.json").read_text())["results"]
        quality = {mode: _accuracy(q, mode) for mode in ("base", "memory", "vote", "knn")}
    rows = runs(folder)
    table = summarize(rows, quality)
    (folder / "consolidation_summary.md").write_text(table + "\n")
    plot(rows, quality, folder / "consolidation_summary.png")
    print(table)


if __name__ == "__main__":
    main()
