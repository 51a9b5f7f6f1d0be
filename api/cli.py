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


def _load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from logmem.model.loading import load_generator

    return load_generator(args.model, home=Path(args.home), dtype=args.dtype)


def _generator(args: argparse.Namespace, memory: VectorMemory | None) -> Any:
    from logmem.model.config import GeneratorConfig
    from logmem.model.generator import MemoryGenerator

    model, tokenizer = _load_model(args)
    config = GeneratorConfig(k=args.k, template=args.template, choose=args.choose)
    return MemoryGenerator(model, tokenizer, memory, config=config, tenant=args.tenant)


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


def cmd_generate(args: argparse.Namespace) -> int:
    with _open_memory(args) as memory:
        gen = _generator(args, None if args.no_memory else memory)
        reply = gen.chat([{"role": "user", "content": args.prompt}], max_new_tokens=args.max_new_tokens)

    def text() -> None:
        print(reply.text)
        print(f"[{len(reply.experiences)} experience(s), {reply.memory_tokens} memory tokens; "
              f"retrieval {reply.retrieval_ms:.0f} ms, model {reply.model_ms:.0f} ms]", file=sys.stderr)

    _emit(args, reply.to_json(), text)
    return EXIT_OK


CHAT_HELP = "commands: /like, /dislike, /fix RIGHT ANSWER, /quit"


def cmd_chat(args: argparse.Namespace) -> int:
    """Interactive chat; feedback on the last answer flows back into the memory."""
    with _open_memory(args) as memory:
        gen = _generator(args, memory)
        print(CHAT_HELP)
        last = None
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line.startswith("/"):
                cmd, _, rest = line.partition(" ")
                kind = {"/like": "like", "/dislike": "dislike", "/fix": "correction"}.get(cmd)
                if kind is None or last is None or (kind == "correction" and not rest.strip()):
                    print(CHAT_HELP if kind is None else "nothing to give feedback on yet" if last is None
                          else "usage: /fix RIGHT ANSWER")
                    continue
                result = gen.feedback(last.interaction_id, kind, text=rest.strip() or None)
                print(f"[feedback recorded: {result['credited']} experience(s) credited, "
                      f"{result['experiences']} stored]")
                continue
            last = gen.chat([{"role": "user", "content": line}], max_new_tokens=args.max_new_tokens)
            print(last.text)
            print(f"[{len(last.experiences)} experience(s) used]")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from logmem.model.config import GeneratorConfig
    from logmem.model.evaluate import MODES, evaluate, greedy_answer_ms, markdown_table, read_eval

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"logmem: unknown mode(s) {', '.join(unknown)}; expected {', '.join(MODES)}", file=sys.stderr)
        return EXIT_USAGE
    items = read_eval(args.eval)[: args.limit or None]
    with _open_memory(args) as memory:
        report = memory.ingest_file(args.logs, progress=not args.json)
        model, tokenizer = _load_model(args)
        config = GeneratorConfig(k=args.k, template=args.template)
        results = evaluate(model, tokenizer, memory, items, modes=modes, config=config, tenant=args.tenant,
                           max_new_tokens=args.max_new_tokens, predictions=args.predictions,
                           progress=not args.json)
        answer_ms = greedy_answer_ms(model, tokenizer) if any(m in ("memory", "vote") for m in modes) else None
    data = {"ingest": {k: v for k, v in report.to_json().items() if isinstance(v, int)},
            "results": [r.summary() for r in results], "greedy_32_tokens_ms": answer_ms}
    _emit(args, data, lambda: print(markdown_table(results, answer_ms)))
    return EXIT_OK


DEMO_QUESTIONS = [
    ("acme", "how can I reverse a python list?"),
    ("acme", "How do I remove a branch from the remote in git?"),
    ("globex", "How do I reverse a list in Python?"),
]


def cmd_demo(args: argparse.Namespace) -> int:
    """Ingest the sample logs, answer with and without memory side by side, take feedback, show stats."""
    sample = resources.files("logmem.api").joinpath("data/sample_logs.jsonl")
    with resources.as_file(sample) as path, _open_memory(args) as memory:
        print(f"== 1. ingest {path.name}")
        report = memory.ingest_file(path, progress=True)
        print("   " + " ".join(f"{k}={v}" for k, v in report.to_json().items() if isinstance(v, int)))
        print("== 2. load the generator (the first run converts the bundled GGUF once, ~20 s)")
        gen = _generator(args, memory)
        base = type(gen)(gen.model, gen.tokenizer, None)
        replies = []
        for tenant, question in DEMO_QUESTIONS:
            bare = base.chat([{"role": "user", "content": question}], max_new_tokens=args.max_new_tokens)
            reply = gen.chat([{"role": "user", "content": question}], tenant=tenant,
                             max_new_tokens=args.max_new_tokens)
            replies.append(reply)
            print(f"\n== 3. [{tenant}] {question}")
            print(f"   without memory: {_one_line(bare.text)}")
            print(f"   with memory:    {_one_line(reply.text)}")
            for h in reply.experiences[-2:]:
                print(f"      used [{h.id}] score={h.score:.3f} (sim={h.sim:.3f} util={h.util:+.3f}): "
                      f"{_one_line(h.response, 70)}")
        print("\n== 4. feedback: like the first answer, dislike the second")
        for reply, kind in zip(replies, ("like", "dislike")):
            result = gen.feedback(reply.interaction_id, kind)
            print(f"   {kind}: {result['credited']} experience(s) credited, {result['experiences']} stored")
        print("\n== 5. stats")
        for key, value in memory.stats().to_json().items():
            print(f"{key:>20}: {json.dumps(value) if isinstance(value, dict) else value}")
    return EXIT_OK


def _one_line(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _generation_options(p: argparse.ArgumentParser, max_new_tokens: int = 128) -> None:
    p.add_argument("--tenant", default="default")
    p.add_argument("-k", type=int, default=8, help="experiences retrieved per request")
    p.add_argument("--template", default="exchanges", help="prompt template name or .jinja path")
    p.add_argument("--choose", default="off", choices=["off", "vote"],
                   help="vote: answer with a memory-supported answer (for tasks whose answers repeat)")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logmem", description="Learn from a language model's user logs.")
    parser.add_argument("--home", default=os.environ.get("LOGMEM_HOME", ".logmem"),
                        help="memory folder (default $LOGMEM_HOME or ./.logmem)")
    parser.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite file in the home)")
    parser.add_argument("--embedder", default=None, help="local sentence-transformers folder (default: MiniLM)")
    parser.add_argument("--model", default=None, help="local model folder or .gguf (default: bundled SmolLM2)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
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

    p = sub.add_parser("generate", help="answer one prompt with memory")
    p.add_argument("prompt")
    p.add_argument("--no-memory", action="store_true", help="answer with the bare model")
    _generation_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat with feedback (/like, /dislike, /fix TEXT)")
    _generation_options(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("eval", help="accuracy of base and memory modes on an eval file")
    p.add_argument("--logs", required=True, help="training logs (ingested into this home first, idempotent)")
    p.add_argument("--eval", required=True, help='eval JSONL: {"id", "messages", "reference"}')
    p.add_argument("--modes", default="base,memory", help="comma list of base, memory, vote, knn")
    p.add_argument("--predictions", default=None, help="write every prediction here (JSONL)")
    p.add_argument("--limit", type=int, default=0, help="only the first N items")
    _generation_options(p, max_new_tokens=16)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the main job end to end on the bundled sample logs")
    _generation_options(p, max_new_tokens=48)
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
