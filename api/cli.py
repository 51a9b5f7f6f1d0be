"""The `logmem` command line: `main(argv) -> int`, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

from logmem.memory import LogmemError
from logmem.memory.errors import ConfigError

from . import cli_parser
from .demo import DEMO_TENANT, one_line, run_demo
from .runtime import SERVED_MODEL, AdapterData, Caller, CanaryView, JobData, KeyData, Pushed, Runtime
from .settings import Settings

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3
__all__ = ["DEMO_TENANT", "EXIT_ERROR", "EXIT_OK", "EXIT_REJECTED", "EXIT_USAGE", "build_parser", "main"]


def _settings(args: argparse.Namespace, **more: Any) -> Settings:
    """The runtime's settings from the global options (and a subcommand's generation options)."""
    fields: dict[str, Any] = {"home": Path(args.home), "db": args.db, "embedder": args.embedder, "model": args.model,
                              "device": args.device, "dtype": args.dtype}
    for name in ("k", "template", "choose", "vote_prior"):
        if getattr(args, name, None) is not None:
            fields[name] = getattr(args, name)
    return Settings(**fields, **more)


def _runtime(args: argparse.Namespace, **more: Any) -> Runtime:
    return Runtime(_settings(args, **more))


def _operator(tenant: str) -> Caller:
    """Who the command line acts for: the machine's operator, on the tenant it names."""
    return Caller(tenant, None, admin=True)


def _operations(args: argparse.Namespace, *, create: bool = False, **more: Any) -> Runtime:
    """A runtime over the SQL store alone, no embedder loaded: all that jobs, adapters and keys need."""
    return Runtime.over_store(_settings(args, **more), create=create)


def _emit(args: argparse.Namespace, data: dict[str, Any], text: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        text()


def cmd_ingest(args: argparse.Namespace) -> int:
    total: dict[str, Any] = {}
    missing = [path for path in args.files if not Path(path).is_file()]
    if missing:  # before any is read: a mistyped name does not leave the others half ingested
        print(f"logmem: {missing[0]}: no such file", file=sys.stderr)
        return EXIT_ERROR
    with closing(_runtime(args)) as runtime:
        for path in args.files:
            report = runtime.ingest_file(path, format=args.format, tenant=args.tenant, progress=not args.json)
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
    with closing(_runtime(args)) as runtime:
        hits = runtime.search(_operator(args.tenant), args.text, args.k)

    def text() -> None:
        if not hits:
            print("no experiences matched")
        for h in hits:
            print(f"[{h.id}] score={h.score:.3f} (sim={h.sim:.3f} util={h.util:+.3f} rec={h.rec:.3f}) "
                  f"support={h.support}")
            print(f"    trigger:  {one_line(h.trigger)}")
            print(f"    response: {one_line(h.response)}")
            if h.lesson:
                print(f"    lesson:   {one_line(h.lesson)}")

    _emit(args, {"hits": [h.to_json() for h in hits]}, text)
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    with closing(_runtime(args)) as runtime:
        stats = runtime.stats(_operator(args.tenant) if args.tenant else None).to_json()
        if args.tenant:
            stats["serving_mode"] = runtime.explain_mode(_operator(args.tenant)).to_json()

    def text() -> None:
        for key, value in stats.items():
            print(f"{key:>20}: {json.dumps(value) if isinstance(value, dict) else value}")

    _emit(args, stats, text)
    return EXIT_OK


def cmd_mode(args: argparse.Namespace) -> int:
    """Show the tenant's serving mode and why; pin one, or unpin."""
    with closing(_runtime(args)) as runtime:
        caller = _operator(args.tenant)
        mode = runtime.pin_mode(caller, None if args.unpin else args.pin) if args.pin or args.unpin \
            else runtime.explain_mode(caller)
    data = mode.to_json()

    def text() -> None:
        print(f"{args.tenant}: {data['mode']}" + (f" with adapter {data['adapter']}" if data["adapter"] else "")
              + f" ({data['source']}: {data['reason']})")
        for name, figure in data["figures"].items():
            print(f"  {name:>15}: {figure:.4f} held-out {data['metric']}")
        for s in data["slices"]:  # each held-out slice the choice was made over
            shown = ", ".join(f"{m} {f:.4f}" for m, f in s["figures"].items())
            print(f"  slice {s['name']} ({s['measured']} of {s['size']} measured, weight {s['weight']:.2f}): {shown}")

    _emit(args, data, text)
    return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    with closing(_runtime(args)) as runtime:  # the operator's erasure may span tenants (a user of all of them)
        counts = runtime.forget(_operator(args.tenant) if args.tenant else None, experience_id=args.id,
                                user=args.user, everything=args.tenant is not None)
    _emit(args, counts, lambda: print(" ".join(f"{k}={v}" for k, v in counts.items()) + " removed"))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Write a tenant whole (its memory, serving mode and adapters) as one archive."""
    with closing(_runtime(args)) as runtime:
        manifest = runtime.export_tenant(_operator(args.tenant), args.file)
    size = Path(args.file).stat().st_size
    counts = " ".join(f"{k}={v}" for k, v in manifest["counts"].items() if v)

    def text() -> None:
        print(f"{args.tenant} -> {args.file} ({size} bytes): {counts}")
        for left in manifest["left_out"]:
            print(f"adapter {left['version']} left out: {left['reason']}", file=sys.stderr)

    _emit(args, {**manifest, "file": args.file, "bytes": size}, text)
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    """Import an archive (as its own tenant, or --as another); nothing is written unless all of it checks out."""
    with closing(_runtime(args)) as runtime:
        report = runtime.import_tenant(_operator(args.as_tenant) if args.as_tenant else None, args.file,
                                       reembed=args.reembed, progress=not args.json)

    def text() -> None:
        added = " ".join(f"{k}={v}" for k, v in report.added.items() if v) or "nothing new"
        kept = sum(report.kept.values())
        print(f"{args.file} -> {report.tenant}: added {added}" + (f"; {kept} row(s) already here" if kept else "")
              + (" (re-embedded)" if report.reembedded else ""))
        for old, new in report.adapters.items():
            print(f"  adapter {old} -> {new}")

    _emit(args, report.to_json(), text)
    return EXIT_OK


def _model_name(args: argparse.Namespace, runtime: Runtime) -> str:
    """The served model (the tenant's active adapter on the base), or the base alone with --no-adapter."""
    return runtime.base_model if args.no_adapter else SERVED_MODEL


def cmd_generate(args: argparse.Namespace) -> int:
    with closing(_runtime(args)) as runtime:
        answer = runtime.chat(_operator(args.tenant), [{"role": "user", "content": args.prompt}],
                              model=_model_name(args, runtime), max_tokens=args.max_new_tokens,
                              use_memory=not args.no_memory)
    reply = answer.reply

    def text() -> None:
        print(reply.text)
        print(f"[{len(reply.experiences)} experience(s), {reply.memory_tokens} memory tokens; "
              f"retrieval {reply.retrieval_ms:.0f} ms, model {reply.model_ms:.0f} ms]", file=sys.stderr)

    _emit(args, {**reply.to_json(), "adapter": answer.adapter}, text)
    return EXIT_OK


CHAT_HELP = "commands: /like, /dislike, /fix RIGHT ANSWER, /quit"


def cmd_chat(args: argparse.Namespace) -> int:
    """Interactive chat; feedback on the last answer flows back into the memory."""
    caller = _operator(args.tenant)
    with closing(_runtime(args)) as runtime:
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
                result = runtime.feedback(caller, last.interaction_id, kind, text=rest.strip() or None)
                print(f"[feedback recorded: {result.credited} experience(s) credited, "
                      f"{result.experiences + result.merged} stored]")
                continue
            last = runtime.chat(caller, [{"role": "user", "content": line}], model=_model_name(args, runtime),
                                max_tokens=args.max_new_tokens).reply
            print(last.text)
            print(f"[{len(last.experiences)} experience(s) used]")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from logmem.model.evaluate import MODES, markdown_table, read_eval

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"logmem: unknown mode(s) {', '.join(unknown)}; expected {', '.join(MODES)}", file=sys.stderr)
        return EXIT_USAGE
    items = read_eval(args.eval)[: args.limit or None]
    with closing(_runtime(args)) as runtime:
        results, data = runtime.evaluate(_operator(args.tenant), args.logs, items, modes=modes,
                                         max_new_tokens=args.max_new_tokens, predictions=args.predictions,
                                         batch_size=args.batch_size, progress=not args.json)
    answer_ms = data["greedy_32_tokens_ms"]
    _emit(args, data, lambda: print(markdown_table(results, answer_ms, contains=args.contains)))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Ingest the sample logs, answer with and without memory side by side, take feedback, show stats,
    consolidate a tenant (`logmem.api.demo`)."""
    with closing(_runtime(args)) as runtime:
        run_demo(runtime, max_new_tokens=args.max_new_tokens)
    return EXIT_OK


def cmd_consolidate(args: argparse.Namespace) -> int:
    """Run a consolidation job now, in this process (a row others can watch with `logmem jobs`)."""
    params = {"epochs": args.epochs, "max_steps": args.max_steps, "with_memory": args.with_memory,
              "eval_every": args.eval_every, "min_steps": args.min_steps, "patience": args.patience,
              "min_gain": args.min_gain, "max_seconds": args.max_seconds,
              "seed": args.seed, "rebuild": args.rebuild, **({"method": args.method} if args.method else {}),
              **({"canary_share": args.canary_share} if args.canary_share else {}),
              **({"lr": args.lr} if args.lr else {}), **({"dpo_weight": args.dpo_weight} if args.dpo_weight else {})}
    with closing(_runtime(args)) as runtime:
        runtime.recover_jobs()  # a dead process's running job would hold the tenant
        job = runtime.run_job(runtime.submit_consolidation(_operator(args.tenant), params).id,
                              progress=not args.json)
    _emit(args, job.to_json(), lambda: print(f"job {job.id} {job.status}: "
                                             f"{(job.metrics or {}).get('gate') or job.error or ''}"))
    return EXIT_OK if job.status == "succeeded" else EXIT_ERROR if job.status == "failed" else EXIT_REJECTED


def cmd_jobs(args: argparse.Namespace) -> int:
    """List the jobs (a dead process's running job is marked failed first), or show one."""
    with closing(_operations(args)) as runtime:
        runtime.recover_jobs()
        if args.id is not None:
            job = runtime.job(None, args.id)
            _emit(args, job.to_json(), lambda: _print_fields(job.to_json()))
            return EXIT_OK
        jobs = runtime.job_list(_operator(args.tenant) if args.tenant else None)
    _emit(args, {"jobs": [j.to_json() for j in jobs]}, lambda: _print_jobs(jobs))
    return EXIT_OK


def _print_jobs(jobs: list[JobData]) -> None:
    if not jobs:
        print("no jobs")
        return
    print(f"{'id':>4}  {'kind':<12} {'tenant':<16} {'status':<10} {'progress':>8}  {'created':<19}  "
          f"{'steps':>9} {'stopped by':<10} {'seconds':>7}  message")
    for j in jobs:
        m = j.metrics or {}
        steps = f"{m['steps']}/{m['steps_planned']}" if "steps" in m else ""
        seconds = f"{m['seconds']:.0f}" if "seconds" in m else ""
        print(f"{j.id:>4}  {j.kind:<12} {j.tenant:<16} {j.status:<10} {j.progress:>8.0%}  {_when(j.created_at)}  "
              f"{steps:>9} {m.get('stop', ''):<10} {seconds:>7}  {one_line(j.error or j.message or '', 60)}")


def cmd_adapters(args: argparse.Namespace) -> int:
    """List the adapters, activate one, roll back to the one active before, or push the active one."""
    to = args.to if args.action == "push" else getattr(args, "push_to", None)  # loaded there before it is active
    target = {"push_to": to, "push_key": _key_from(args.key_env) if to else None, "push_as_tenant": args.as_tenant}
    with closing(_operations(args, **target)) as runtime:
        if args.action is None:
            adapters = runtime.adapters(_operator(args.tenant) if args.tenant else None)
            data = {"adapters": [{**a.to_json(), "covered": len(a.covered)} for a in adapters]}
            _emit(args, data, lambda: _print_adapters(adapters))
            return EXIT_OK
        if args.action == "push":
            pushed = runtime.push(_operator(args.tenant or "default"))
            _emit(args, pushed.to_json(), lambda: _print_pushed(pushed, args.to))
            return EXIT_OK
        if args.action == "activate":
            tenant = args.tenant or runtime.adapter(args.version).tenant
            change = runtime.activate(_operator(tenant), args.version, force=args.force)
        else:
            change = runtime.rollback(_operator(args.tenant or "default"))
    tenant, now, was, done = change.tenant, change.active, change.was, change.pushed
    what = f"{now} active" if now else "base model (no adapter active)"
    note = " (unchanged)" if was == now else f" (was {was})" if was else ""
    _emit(args, {"tenant": tenant, "active": now, "was": was}, lambda: print(f"{tenant}: {what}{note}"))
    if done is not None and to:
        _emit(args, done.to_json(), lambda: _print_pushed(done, to))
    return EXIT_OK


def cmd_canary(args: argparse.Namespace) -> int:
    """The tenant's canary: its arms' outcomes and the decision (and the canaries that ended), or promote, stop, pin
    or unpin the live one."""
    target = {"push_to": args.push_to, "push_key": _key_from(args.key_env) if args.push_to else None,
              "push_as_tenant": args.as_tenant}
    with closing(_operations(args, **target)) as runtime:
        caller = _operator(args.tenant)
        if args.action == "status":
            views = runtime.canaries(caller)
            _emit(args, {"tenant": args.tenant, "canaries": [v.to_json() for v in views]},
                  lambda: _print_canaries(args.tenant, views))
            return EXIT_OK
        acts: dict[str, Callable[[Caller], CanaryView]] = {
            "promote": runtime.promote_canary, "stop": runtime.stop_canary,
            "pin": lambda c: runtime.pin_canary(c, True), "unpin": lambda c: runtime.pin_canary(c, False)}
        view = acts[args.action](caller)
    _emit(args, view.to_json(), lambda: _print_canary(view))
    if view.pushed is not None and not args.json:
        _print_pushed(view.pushed, args.push_to)
    return EXIT_OK


def _print_canaries(tenant: str, views: list[CanaryView]) -> None:
    live = [v for v in views if v.canary.status == "live"]
    if not live:
        print(f"{tenant}: no live canary")
    for view in live:
        _print_canary(view)
    ended = [v.canary for v in views if v.canary.status != "live"]
    if ended:
        print(f"ended ({len(ended)}):")
    for c in ended:
        print(f"  {c.id:>4}  {c.version:<8} {c.status:<11} {_when(c.started_at)} to {_when(c.decided_at)}  "
              f"{one_line(c.reason, 80)}")


def _print_canary(view: CanaryView) -> None:
    c, shown, d = view.canary, view.to_json(), view.decision
    state = c.status + (", pinned" if c.pinned else "")
    print(f"{c.tenant}: canary {c.id}, adapter {c.version} ({state}): {c.share:.0%} of conversations in {c.mode}, "
          f"against {f'adapter {c.current}' if c.current else 'the base model'}; started {_when(c.started_at)}")
    for arm, counts in shown["arms"].items():
        rate = f"{counts['rate']:.3f}" if counts["rate"] is not None else "-"
        print(f"  {arm:<8} {counts['n']:>6} rated conversations, good-outcome rate {rate}")
    if d:
        print(f"  e-values: better {d['e_better']:.3g} (promotes at {d['promote_threshold']:g}), worse "
              f"{d['e_worse']:.3g} (rolls back at {d['rollback_threshold']:g})")
        said = "verdict" if c.status == "live" else "its outcomes said, when it ended:"
        print(f"  {said} {d['verdict']}: {d['reason']}")
    if c.status != "live":
        print(f"  {c.status} {_when(c.decided_at)}: {c.reason}")


def _key_from(variable: str | None) -> str | None:
    """The value of the environment variable named `variable` (a key never goes on a command line)."""
    if not variable:
        return None
    if not os.environ.get(variable):
        raise ConfigError(f"the environment variable {variable} (named by a --...-key-env option) is not set")
    return os.environ[variable]


def _print_pushed(pushed: Pushed, url: str) -> None:
    where = f"{pushed.name} ({'loaded' if pushed.loaded else 'already loaded'})" if pushed.name else "the base model"
    print(f"{pushed.tenant}: {url} serves {where}")
    for name in pushed.unloaded:
        print(f"  unloaded {name}")


def cmd_serve(args: argparse.Namespace) -> int:
    """The HTTP service (uvicorn). One process per worker; several need a database they can share."""
    import uvicorn

    upstream: dict[str, Any] = {}
    if args.upstream:
        upstream = {"upstream": args.upstream, "upstream_model": args.upstream_model,
                    "upstream_key": _key_from(args.upstream_key_env)}
    if args.push_to:
        upstream.update(push_to=args.push_to, push_key=_key_from(args.push_key_env),
                        push_as_tenant=args.push_as_tenant)
    settings = _settings(args, worker=not args.no_worker, **{k: v for k, v in upstream.items() if v is not None})
    if args.workers > 1:
        if settings.db_url.startswith("sqlite"):
            print("logmem: several --workers need a shared database: pass --db postgresql+psycopg://...",
                  file=sys.stderr)
            return EXIT_USAGE
        for name, value in settings.model_dump(exclude_none=True).items():  # each worker builds its own from these
            if name in ("upstream_key", "push_key"):  # secrets: their values, not masks (the admin key is from there)
                os.environ[f"LOGMEM_{name.upper()}"] = getattr(settings, name).get_secret_value()
            elif name != "admin_key":
                os.environ[f"LOGMEM_{name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
        uvicorn.run("logmem.api.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                    log_level="info" if args.verbose else "warning")
        return EXIT_OK
    from .app import create_app

    runtime = Runtime(settings)
    if not runtime.keys() and settings.admin_key is None:
        print("logmem: no API keys yet; make one with `logmem keys create --tenant NAME`", file=sys.stderr)
    uvicorn.run(create_app(runtime=runtime), host=args.host, port=args.port,
                log_level="info" if args.verbose else "warning")
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    """Run queued (and the policy's periodic) consolidation jobs, one at a time per tenant."""
    import threading

    with closing(_runtime(args)) as runtime:
        ran = runtime.work(threading.Event(), once=args.once)
    print(f"{ran} job(s) run")
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    """API keys of the service: create (the key is printed once, on the last line), list, revoke."""
    with closing(_operations(args, create=True)) as runtime:  # the service's first key may come before its first log
        if args.action == "create":
            if (args.tenant is None) == (not args.admin):
                print("logmem: keys create needs --tenant NAME, or --admin", file=sys.stderr)
                return EXIT_USAGE
            key, record = runtime.create_key(tenant=args.tenant, admin=args.admin, name=args.name)
            _emit(args, {**record.to_json(), "key": key}, lambda: print(
                f"key {record.id} for {'any tenant it names (admin)' if record.admin else record.tenant}:\n{key}"))
        elif args.action == "revoke":
            runtime.revoke_key(args.id)
            _emit(args, {"revoked": args.id}, lambda: print(f"key {args.id} revoked"))
        else:
            keys = runtime.keys(args.tenant)
            _emit(args, {"keys": [k.to_json() for k in keys]}, lambda: _print_keys(keys))
    return EXIT_OK


def _print_keys(keys: list[KeyData]) -> None:
    if not keys:
        print("no keys")
    for k in keys:
        state = f"revoked {_when(k.revoked_at)}" if k.revoked_at else "live"
        print(f"{k.id:>4}  {k.prefix}…  {'(admin)' if k.admin else k.tenant:<16} {state:<28} {k.name or ''}")


def _print_adapters(adapters: list[AdapterData]) -> None:
    if not adapters:
        print("no adapters")
        return
    print(f"{'tenant':<16} {'version':<8} {'status':<17} {'active':<6} {'method':<7} {'covered':>7}  "
          f"{'created':<19}  path")
    for a in adapters:
        status = a.status + (" (stale)" if a.stale_at is not None and a.status != "stale" else "")
        print(f"{a.tenant:<16} {a.version:<8} {status:<17} {'*' if a.active else '':<6} {a.method:<7} "
              f"{len(a.covered):>7}  {_when(a.created_at)}  {a.path}")


def _print_fields(data: dict[str, Any]) -> None:
    for key, value in data.items():
        shown = json.dumps(value) if isinstance(value, (dict, list)) else _when(value) if key.endswith("_at") else value
        print(f"{key:>13}: {shown}")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts is not None else "-"


COMMANDS = {  # subcommand -> what runs it
    "ingest": cmd_ingest, "search": cmd_search, "stats": cmd_stats, "mode": cmd_mode, "forget": cmd_forget,
    "export": cmd_export, "import": cmd_import,
    "generate": cmd_generate, "chat": cmd_chat, "eval": cmd_eval, "demo": cmd_demo, "consolidate": cmd_consolidate,
    "jobs": cmd_jobs, "serve": cmd_serve, "worker": cmd_worker, "keys": cmd_keys, "adapters": cmd_adapters,
    "canary": cmd_canary,
}


def build_parser() -> argparse.ArgumentParser:
    """The `logmem` command line's parser (`cli_parser`), each subcommand run by its `cmd_*` here."""
    return cli_parser.build_parser(COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except LogmemError as exc:  # expected (no memory, a database out of reach, nothing to consolidate)
        return _failed(args, str(exc))
    except FileNotFoundError as exc:  # a file named on the command line (an eval set, logs) is not there
        return _failed(args, f"{exc.filename}: no such file")


def _failed(args: argparse.Namespace, message: str) -> int:
    """An expected failure: one line on stderr saying what and where; the traceback too with -v."""
    if args.verbose:
        traceback.print_exc()
    print(f"logmem: {message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
