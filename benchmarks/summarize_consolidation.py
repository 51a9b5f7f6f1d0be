"""One table of every consolidation run in a results folder (the README's), from the JSON files that
`bench_consolidation.py` and `bench_quality.py` wrote.

    python benchmarks/summarize_consolidation.py --results benchmarks/results

Writes `consolidation_summary.md` there and prints it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _accuracy(results: list[dict[str, Any]], mode: str) -> str:
    found = [r for r in results if r["mode"] == mode]
    return f"{found[0]['accuracy']:.3f}" if found else "–"


def _eval_setup(data: dict[str, Any]) -> str:
    """How the answers were generated: the runs before batched eval used bfloat16, one question at a time."""
    if not data.get("results"):
        return "–"
    if "batch_size" not in data:
        return "bfloat16, 1 at a time"
    return f"{data.get('eval_dtype', 'float32')}, batches of {data['batch_size']}"


def summarize(folder: Path) -> str:
    lines = []
    quality = folder / "quality_test.json"
    if quality.is_file():
        q = json.loads(quality.read_text())["results"]
        lines += ["Without consolidation (`bench_quality.py`, NFCats test, 480 questions): "
                  f"base {_accuracy(q, 'base')}, memory {_accuracy(q, 'memory')}, vote {_accuracy(q, 'vote')}, "
                  f"kNN vote {_accuracy(q, 'knn')}.", ""]
    lines += ["| objective | student | job min (2 cores) | gate | held-out NLL | probe ppl | eval | dev consolidated | "
              "test consolidated | test memory+adapter | test memory+adapter, consolidated out of retrieval |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("consolidation_*_test.json")):
        data = json.loads(path.read_text())
        params, metrics = data["params"], data["job"].get("metrics") or {}
        student = "with memory" if params.get("with_memory") else "bare"
        if params.get("lr"):
            student += f", lr {params['lr']:g}"
        results = data.get("results", [])
        dev = data.get("dev", {}).get("results", [])
        nll = (f"{metrics['base_nll']:.3f} -> {metrics['student_nll']:.3f}" if "student_nll" in metrics else "–")
        ppl = (f"{metrics['base_probe_ppl']:.2f} -> {metrics['student_probe_ppl']:.2f}"
               if "student_probe_ppl" in metrics else "–")
        lines.append(f"| {params['method']} | {student} | {data['job_seconds'] / 60:.1f} | {data['job']['status']} | "
                     f"{nll} | {ppl} | {_eval_setup(data)} | {_accuracy(dev, 'consolidated')} | "
                     f"{_accuracy(results, 'consolidated')} | "
                     f"{_accuracy(results, 'memory+adapter')} | "
                     f"{_accuracy(results, 'memory+adapter, consolidated out of retrieval')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="benchmarks/results")
    args = p.parse_args()
    table = summarize(Path(args.results))
    (Path(args.results) / "consolidation_summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
