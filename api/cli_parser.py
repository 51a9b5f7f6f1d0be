"""The `logmem` command line's arguments: one parser, its subcommands and their options, every default taken from
the settings, the vocabulary or the configs (so that `logmem --help` and the settings agree)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import Any

from logmem.memory.vocabulary import ANSWER_TOKENS, CHOOSE_VALUES, DTYPES, LOG_FORMATS, METHODS, SERVING_MODES
from logmem.model.config import ConsolidationConfig  # no torch behind it: the CLI starts quickly

from .settings import Settings

Commands = Mapping[str, Callable[[argparse.Namespace], int]]  # subcommand name -> what runs it


def _default(name: str) -> Any:
    """A setting's default (Settings), so that `--help` and the settings say the same."""
    return Settings.model_fields[name].default


def _generation_options(p: argparse.ArgumentParser, max_new_tokens: int = ANSWER_TOKENS) -> None:
    p.add_argument("--tenant", default="default")
    p.add_argument("-k", type=int, default=_default("k"), help="experiences retrieved per request")
    p.add_argument("--template", default=_default("template"), help="prompt template name or .jinja path")
    p.add_argument("--choose", default=_default("choose"), choices=CHOOSE_VALUES,
                   help="default: the tenant's serving mode (`logmem mode`); off: free generation with memory; "
                        "vote: answer with a memory-supported answer (for tasks whose answers repeat); "
                        "auto: vote where the tenant's answers repeat, generate freely where they do not")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--no-adapter", action="store_true", help="ignore the tenant's active adapter")


def build_parser(commands: Commands) -> argparse.ArgumentParser:
    """The `logmem` parser; each subcommand's `func` is `commands[its name]`."""
    parser = argparse.ArgumentParser(prog="logmem", description="Learn from a language model's user logs.")
    parser.add_argument("--home", default=os.environ.get("LOGMEM_HOME", str(_default("home"))),
                        help="memory folder (default $LOGMEM_HOME or ./.logmem)")
    parser.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite file in the home)")
    parser.add_argument("--embedder", default=None, help="local sentence-transformers folder (default: MiniLM)")
    parser.add_argument("--model", default=None, help="local model folder or .gguf (default: bundled SmolLM2)")
    parser.add_argument("--dtype", default=_default("dtype"), choices=DTYPES,
                        help="auto: bfloat16 on a GPU, float32 on the CPU (default: %(default)s)")
    parser.add_argument("--device", default=_default("device"),
                        help="torch device of the model (auto: the first GPU when there is one, else the CPU)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="read log files into the memory")
    p.add_argument("files", nargs="+")
    p.add_argument("--format", choices=LOG_FORMATS, default="auto")
    p.add_argument("--tenant", default=None, help="store every record under this tenant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["ingest"])

    p = sub.add_parser("search", help="the best experiences for a request")
    p.add_argument("text")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--tenant", default="default")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["search"])

    p = sub.add_parser("stats", help="what the memory holds")
    p.add_argument("--tenant", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["stats"])

    p = sub.add_parser("mode", help="the tenant's serving mode and why (measured by its consolidation jobs); "
                                    "--pin MODE or --unpin")
    p.add_argument("--tenant", default="default")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--pin", choices=SERVING_MODES,
                       help="serve this mode whatever jobs measure")
    group.add_argument("--unpin", action="store_true", help="serve the measured mode again")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["mode"])

    p = sub.add_parser("forget", help="remove an experience, a user's data or a tenant")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--id", type=int)
    group.add_argument("--user")
    group.add_argument("--tenant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["forget"])

    p = sub.add_parser("export", help="write a tenant whole (memory, serving mode, adapters) as one archive file")
    p.add_argument("file", help="the archive to write (a zip)")
    p.add_argument("--tenant", default="default")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["export"])

    p = sub.add_parser("import", help="import a tenant's archive (verified whole first; twice changes nothing)")
    p.add_argument("file", help="an archive written by `logmem export`")
    p.add_argument("--as", dest="as_tenant", default=None, metavar="T",
                   help="import it as tenant T (default: the tenant it was exported from)")
    p.add_argument("--reembed", action=argparse.BooleanOptionalAction, default=None,
                   help="compute the vectors here even for an archive of this embedder; --no-reembed refuses an "
                        "archive of another embedder instead of re-embedding it (default: only when it differs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["import"])

    p = sub.add_parser("generate", help="answer one prompt with memory")
    p.add_argument("prompt")
    p.add_argument("--no-memory", action="store_true", help="answer with the bare model")
    _generation_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["generate"])

    p = sub.add_parser("chat", help="interactive chat with feedback (/like, /dislike, /fix TEXT)")
    _generation_options(p)
    p.set_defaults(func=commands["chat"])

    p = sub.add_parser("eval", help="accuracy of base and memory modes on an eval file")
    p.add_argument("--logs", required=True,
                   help="training logs (ingested into this home first as the tenant's, idempotent)")
    p.add_argument("--eval", required=True, help='eval JSONL: {"id", "messages", "reference"}')
    p.add_argument("--modes", default="base,memory",
                   help="comma list of base, memory, vote, auto, knn, consolidated, memory+adapter, and default "
                        "(what the tenant is served when a request names no mode: `logmem mode`)")
    p.add_argument("--predictions", default=None, help="write every prediction here (JSONL)")
    p.add_argument("--limit", type=int, default=0, help="only the first N items")
    p.add_argument("--batch-size", type=int, default=1,
                   help="answer N items per batched generation (faster; model ms become shares of a batch)")
    p.add_argument("--contains", action="store_true",
                   help="also score free text: the answers that contain a reference anywhere (beside exact match)")
    p.add_argument("--vote-prior", type=float, default=_default("vote_prior"),
                   help="weight of the memory's vote against the model in the vote mode")
    _generation_options(p, max_new_tokens=16)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["eval"])

    p = sub.add_parser("demo", help="the whole loop on the bundled sample logs: ingest, answer, feedback, "
                                    "stats, consolidate")
    _generation_options(p, max_new_tokens=48)
    p.set_defaults(func=commands["demo"])

    p = sub.add_parser("consolidate", help="train, gate and register a LoRA adapter from the memory")
    p.add_argument("--tenant", default="default")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="the objective (default: ConsolidationConfig's, sft: lowest held-out NLL on NFCats)")
    p.add_argument("--epochs", type=int, default=ConsolidationConfig.epochs)
    p.add_argument("--max-steps", type=int, default=ConsolidationConfig.max_steps,
                   help="stop after N optimizer steps (0: no cap)")
    p.add_argument("--eval-every", type=int, default=ConsolidationConfig.eval_every,
                   help="measure the held-out NLL every N steps and keep the best weights (0: after the last only)")
    p.add_argument("--min-steps", type=int, default=ConsolidationConfig.min_steps,
                   help="measure (and stop early) from this step on; a job planned for fewer is measured once")
    p.add_argument("--patience", type=int, default=ConsolidationConfig.patience,
                   help="stop after N measurements in a row that gain less than --min-gain (0: never stop early)")
    p.add_argument("--min-gain", type=float, default=ConsolidationConfig.min_gain,
                   help="held-out NLL (nats per token) a measurement must gain on the best to count")
    p.add_argument("--max-seconds", type=float, default=ConsolidationConfig.max_seconds,
                   help="stop training once the job has run this long (0: no bound)")
    p.add_argument("--with-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="train the memory+adapter student (experiences stay in its prompt), or with "
                        "--no-with-memory the bare one (default: the job chooses by the held-out NLL)")
    p.add_argument("--lr", type=float, default=0.0,
                   help="AdamW learning rate (default 0: ConsolidationConfig's, 5e-4 for the memory+adapter student, "
                        "2.5e-4 for the bare one)")
    p.add_argument("--dpo-weight", type=float, default=0.0,
                   help="add a DPO term on corrected answers (accepted over rejected) with this weight (0: off)")
    p.add_argument("--seed", type=int, default=ConsolidationConfig.seed)
    p.add_argument("--rebuild", action="store_true",
                   help="retrain what stale adapters covered, without the forgotten experiences, and delete them")
    p.add_argument("--canary-share", type=float, default=ConsolidationConfig.canary_share,
                   help="a promoted adapter first answers this share of the tenant's conversations as its canary, "
                        "until the users' outcomes promote or roll it back (`logmem canary`; 0: off)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["consolidate"])

    p = sub.add_parser("jobs", help="consolidation jobs: list them, or show one")
    p.add_argument("id", type=int, nargs="?", help="show this job")
    p.add_argument("--tenant", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["jobs"])

    _adapters_parser(sub, commands)
    _canary_parser(sub, commands)
    _service_parsers(sub, commands)
    return parser


CANARY_ACTIONS = ("status", "promote", "stop", "pin", "unpin")


def _canary_parser(sub: Any, commands: Commands) -> None:
    p = sub.add_parser("canary", help="the tenant's canary adapter: status (each arm's outcomes, the e-values, the "
                                      "verdict; and the canaries that ended), promote, stop, pin or unpin it")
    p.add_argument("action", nargs="?", default="status", choices=CANARY_ACTIONS,
                   help="status (default); promote or stop the live canary now; pin: hold it at its share with no "
                        "automatic decision; unpin: let its outcomes decide again")
    p.add_argument("--tenant", default="default")
    p.add_argument("--push-to", default=None, metavar="URL",
                   help="promote: then push the tenant's active adapter to this server, as `adapters activate` does")
    p.add_argument("--key-env", default=None, metavar="VAR", help="the environment variable holding its key")
    p.add_argument("--as-tenant", default=None, metavar="T", help=AS_TENANT)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["canary"])


AS_TENANT = ("a logmem server: the tenant it knows the proxy as, which owns what is loaded there (default: the "
             "pushed tenant's name; vLLM ignores it)")


def _service_parsers(sub: Any, commands: Commands) -> None:
    p = sub.add_parser("serve", help="the HTTP service: OpenAI-compatible chat, feedback, memory, consolidation")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes (more than one needs --db PostgreSQL)")
    p.add_argument("--no-worker", action="store_true", help="do not run consolidation jobs here (`logmem worker`)")
    p.add_argument("--upstream", default=None, metavar="URL",
                   help="answer through this OpenAI-compatible server (base URL with /v1), not the local model")
    p.add_argument("--upstream-key-env", default=None, metavar="VAR", help="the environment variable holding its key")
    p.add_argument("--upstream-model", default=None, metavar="NAME",
                   help="the model name it serves (default: the first its /v1/models lists)")
    p.add_argument("--push-to", default=None, metavar="URL",
                   help="a vLLM server (base URL with /v1) that each activation, rollback and promoting job pushes "
                        "the tenant's adapter to, as <tenant>-<version>")
    p.add_argument("--push-key-env", default=None, metavar="VAR", help="the environment variable holding its key")
    p.add_argument("--push-as-tenant", default=None, metavar="T", help=AS_TENANT)
    p.set_defaults(func=commands["serve"])

    p = sub.add_parser("worker", help="run queued and periodic consolidation jobs")
    p.add_argument("--once", action="store_true", help="run what is queued, then exit")
    p.set_defaults(func=commands["worker"])

    p = sub.add_parser("keys", help="API keys of the service: create, list, revoke")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["keys"], action="list", tenant=None)
    actions = p.add_subparsers(dest="action")
    q = actions.add_parser("create", help="a new key for a tenant (printed once, on the last line)")
    q.add_argument("--tenant", default=None)
    q.add_argument("--admin", action="store_true", help="a key that acts for any tenant it names")
    q.add_argument("--name", default=None, help="what the key is for")
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    q = actions.add_parser("list", help="the keys (never the keys themselves)")
    q.add_argument("--tenant", default=None)
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    q = actions.add_parser("revoke", help="revoke key ID")
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS)


def _adapters_parser(sub: Any, commands: Commands) -> None:
    p = sub.add_parser("adapters", help="the tenants' LoRA adapters: list, activate VERSION, rollback")
    p.add_argument("--tenant", default=None, help="list: only this tenant; rollback: default 'default'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["adapters"], action=None, force=False, key_env=None, as_tenant=None)
    actions = p.add_subparsers(dest="action")
    # SUPPRESS: an option left out after the action keeps the value given before it (`adapters --tenant T rollback`)
    q = actions.add_parser("activate", help="make VERSION its tenant's active adapter")
    q.add_argument("version")
    q.add_argument("--tenant", default=argparse.SUPPRESS, help="check that VERSION belongs to this tenant")
    q.add_argument("--force", action="store_true", help="activate a stale adapter all the same")
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    q = actions.add_parser("rollback", help="re-activate the adapter active before (or the base model)")
    q.add_argument("--tenant", default=argparse.SUPPRESS)
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    q = actions.add_parser("push", help="load the tenant's active adapter into a vLLM server as <tenant>-<version>")
    q.add_argument("--to", required=True, metavar="URL", help="the server's base URL with /v1")
    q.add_argument("--tenant", default=argparse.SUPPRESS)
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    for q in (actions.choices["activate"], actions.choices["rollback"]):
        q.add_argument("--push-to", default=None, metavar="URL", help="then push the active adapter to this server")
    for q in actions.choices.values():
        q.add_argument("--key-env", default=None, metavar="VAR", help="the environment variable holding its key")
        q.add_argument("--as-tenant", default=None, metavar="T", help=AS_TENANT)
