"""The `logmem` command line: `main(argv) -> int`, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from logmem.memory import LogmemError, MemoryConfig, VectorMemory
from logmem.memory.logs import FORMATS

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3


def _open_memory(args: argparse.Namespace, config: MemoryConfig | None = None) -> VectorMemory:
    from logmem.model.embedding import SentenceTransformerEmbedder, default_embedder

    embedder = SentenceTransformerEmbedder(path=args.embedder) if args.embedder else default_embedder()
    return VectorMemory(args.home, embedder=embedder, db_url=args.db, config=config)


def _emit(args: argparse.Namespace, data: dict[str, Any], text: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        text()


def cmd_ingest(args: argparse.Namespace) -> int:
    total: dict[str, Any] = {}
    with _open_memory(args) as memory:
        for path in args.files:
            if not Path(path).is_file():
                print(f"logmem: {path}: no such file", file=sys.stderr)
                return EXIT_ERROR
            report = memory.ingest_file(path, format=args.format, tenant=args.tenant, progress=not args.json)
            for key, value in report.to_json().items():
                if isinstance(value, int):
                    total[key] = total.get(key, 0) + value
                elif isinstance(value, list):
                    total.setdefault(key, []).extend(value)
                elif value is not None:
                    total.setdefault("rejected_files", []).append(value)

    def text() -> None:
        print(" ".join(f"{k}={total.get(k, 0)}" for k in
                       ("read", "stored", "skipped", "rejected", "experiences", "merged", "conflicts", "filtered")))
        for line in total.get("errors", [])[:20]:
            print(f"rejected: {line}", file=sys.stderr)
        for side in total.get("rejected_files", []):
            print(f"rejected lines written to {side}", file=sys.stderr)

    _emit(args, total, text)
    return EXIT_REJECTED if total.get("rejected") else EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    with _open_memory(args) as memory:
        hits = memory.search(args.text, args.k, tenant=args.tenant)

    def text() -> None:
        if not hits:
            print("no experiences matched")
        for h in hits:
            print(f"[{h.id}] score={h.score:.3f} (sim={h.sim:.3f} util={h.util:+.3f} rec={h.rec:.3f}) "
                  f"support={h.support}")
            print(f"    trigger:  {_one_line(h.trigger)}")
            print(f"    response: {_one_line(h.response)}")
            if h.lesson:
                print(f"    lesson:   {_one_line(h.lesson)}")

    _emit(args, {"hits": [h.to_json() for h in hits]}, text)
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    with _open_memory(args) as memory:
        stats = memory.stats(args.tenant).to_json()

    def text() -> None:
        for key, value in stats.items():
            print(f"{key:>20}: {json.dumps(value) if isinstance(value, dict) else value}")

    _emit(args, stats, text)
    return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    with _open_memory(args) as memory:
        counts = memory.forget(id=args.id, user=args.user, tenant=args.tenant)
    _emit(args, counts, lambda: print(" ".join(f"{k}={v}" for k, v in counts.items()) + " removed"))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    sample = resources.files("logmem.api").joinpath("data/sample_logs.jsonl")
    with resources.as_file(sample) as path, _open_memory(args) as memory:
        print(f"== ingest {path.name}")
        report = memory.ingest_file(path, progress=True)
        print(" ".join(f"{k}={v}" for k, v in report.to_json().items() if isinstance(v, int)))
        for tenant in ("acme", "globex"):
            question = "how can I reverse a python list"
            print(f"\n== search tenant={tenant}: {question!r}")
            for h in memory.search(question, 3, tenant=tenant):
                print(f"  score={h.score:.3f} sim={h.sim:.3f} util={h.util:+.3f}  {_one_line(h.response)}")
        print("\n== stats")
        for key, value in memory.stats().to_json().items():
            print(f"{key:>20}: {json.dumps(value) if isinstance(value, dict) else value}")
    return EXIT_OK


def _one_line(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logmem", description="Learn from a language model's user logs.")
    parser.add_argument("--home", default=os.environ.get("LOGMEM_HOME", ".logmem"),
                        help="memory folder (default $LOGMEM_HOME or ./.logmem)")
    parser.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite file in the home)")
    parser.add_argument("--embedder", default=None, help="local sentence-transformers folder (default: MiniLM)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="read log files into the memory")
    p.add_argument("files", nargs="+")
    p.add_argument("--format", choices=FORMATS, default="auto")
    p.add_argument("--tenant", default=None, help="store every record under this tenant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="the best experiences for a request")
    p.add_argument("text")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--tenant", default="default")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("stats", help="what the memory holds")
    p.add_argument("--tenant", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("forget", help="remove an experience, a user's data or a tenant")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--id", type=int)
    group.add_argument("--user")
    group.add_argument("--tenant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("demo", help="ingest the bundled sample logs, search, show stats")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except LogmemError as exc:
        print(f"logmem: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
