"""How fast do logs become memory? Ingest throughput with the real embedder, SQLite and faiss.

    python benchmarks/bench_ingest.py --logs data/nfcats/logs.jsonl --out benchmarks/results

Each repeat ingests the file into a fresh home (parse, judge, distil, embed, dedup, SQL, index) and
then once more into the same home (the idempotent re-ingest, which skips every record). Writes
`ingest.json` and `ingest.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from logmem.memory import VectorMemory  # noqa: E402
from logmem.model.embedding import default_embedder  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", default="data/nfcats/logs.jsonl", help="native-schema JSONL (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    embedder = default_embedder()
    embedder.encode(["warm up"])  # model load is not ingest
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as home, VectorMemory(home, embedder=embedder) as memory:
            t0 = time.perf_counter()
            first = memory.ingest_file(args.logs)
            t1 = time.perf_counter()
            again = memory.ingest_file(args.logs)
            t2 = time.perf_counter()
        runs.append({"seconds": t1 - t0, "reingest_seconds": t2 - t1, "read": first.read,
                     "experiences": first.experiences, "merged": first.merged, "filtered": first.filtered,
                     "reingest_stored": again.stored})
    sec = statistics.median(r["seconds"] for r in runs)
    re_sec = statistics.median(r["reingest_seconds"] for r in runs)
    n = runs[0]["read"]
    result = {"logs": args.logs, "runs": runs, "interactions_per_s": n / sec, "reingest_per_s": n / re_sec,
              "machine": f"{platform.machine()}, {os.cpu_count()} cpu"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(result, indent=2))
    table = "\n".join([
        f"| logs | interactions | experiences | merged | filtered | ingest (median of {args.repeats}) | "
        "interactions/s | re-ingest interactions/s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {Path(args.logs).parent.name}/{Path(args.logs).name} | {n} | {runs[0]['experiences']} | "
        f"{runs[0]['merged']} | {runs[0]['filtered']} | {sec:.1f} s | {n / sec:.0f} | {n / re_sec:.0f} |",
    ])
    (out / "ingest.md").write_text(f"# Ingest throughput ({result['machine']})\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
