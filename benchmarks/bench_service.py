"""How does the HTTP service hold up under concurrent clients, and what does HTTP cost over the runtime itself?

    python benchmarks/bench_service.py --logs data/nfcats/logs.jsonl --out benchmarks/results [--quick]

1. Prepares a SQLite home in this process: ingests the logs under tenant `acme` (all but `--answers` held-out
   records), creates an API key, and logs one served answer per held-out record exactly as a chat does
   (`VectorMemory.log_answer` with the hits a search returns), so that feedback has answers to judge.
2. Starts the real server process (`uvicorn logmem.api.app:create_app --factory` on loopback) and loads it
   route by route, each for `--duration` s with `--clients` concurrent clients (one httpx AsyncClient):
   search, chat (`--max-tokens`), then feedback on the held-out answers and on the chat phase's answers
   (several events per answer; some sent twice with the same event id, as a client retries).
3. Checks that nothing was lost or counted twice, from SQL: feedback_events rows = distinct events sent,
   feedback rows of the judged answers = distinct events sent, an answers row per successful chat.
4. Service overhead: the same call, one at a time (warm, the server otherwise idle), over HTTP and on a
   `Runtime` in this process on the same home, in interleaved pairs so that both see the same machine.

Writes `service.json`, `service.md` and `service.png` to `--out`. Client and server share this machine's
cores (2 here), so the load rows measure the pair; the overhead rows run with nothing else of ours running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from common import logmem_server, save_figure, sized  # noqa: E402  # benchmarks/ is on sys.path when run as a script
from service_overhead import WARMUP, K, overhead, overhead_rows, overhead_table  # noqa: E402

TENANT = "acme"
FIRST_KINDS = {"like": 0.6, "copy": 0.1, "dislike": 0.15, "correction": 0.1, "rating": 0.05}  # an answer's 1st event
LATER_KINDS = {"like": 0.35, "copy": 0.2, "dislike": 0.2, "rating": 0.2, "correction": 0.05}  # its later events
RETRY_P = 0.1  # share of acknowledged feedback events sent again with the same event id
FULL = {"clients": 8, "duration": 30.0, "max_tokens": 16, "overhead_n": 300, "answers": 300}
QUICK = {"clients": 4, "duration": 3.0, "max_tokens": 4, "overhead_n": 30, "answers": 10}


@dataclass
class Phase:
    """One route under load: per-request latencies (ms) and statuses, as the clients saw them."""

    route: str
    clients: int
    duration_s: float  # from the first request sent to the last response received
    latencies_ms: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # HTTP status; 0 for a transport error or timeout
    notes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {"route": self.route, "clients": self.clients, "duration_s": round(self.duration_s, 2),
                "requests": len(self.statuses), "req_per_s": len(self.statuses) / max(self.duration_s, 1e-9),
                "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                "errors": sum(1 for s in self.statuses if not 200 <= s < 300),
                "statuses": {str(k): v for k, v in sorted(Counter(self.statuses).items())}, **self.notes}


@dataclass
class Prepared:
    """What the prepared home holds for the run."""

    key: str
    answers: list[str]  # held-out served answers to judge (ids)
    corrections: dict[str, str]  # answer id -> the logged right answer (a correction's text)
    queries: list[str]  # user turns to search and chat with
    overhead_query: str
    overhead_ids: dict[str, list[str]]  # "http" / "inprocess" -> served answers for the overhead series
    experiences: int
    prepare_s: float


# --- the home ------------------------------------------------------------------------------------
def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prepare_home(home: Path, records: list[dict[str, Any]], n_answers: int, n_overhead: int) -> Prepared:
    """Ingest all but `n_answers` records; log a served answer for each held-out one and 2 x `n_overhead`
    identical served answers for the overhead series (a dislike of each does the same work)."""
    from logmem.memory import VectorMemory
    from logmem.model.embedding import default_embedder

    started = time.perf_counter()
    order = np.random.default_rng(0).permutation(len(records))
    n_answers = min(n_answers, len(records) // 5)
    held, kept = [records[i] for i in order[:n_answers]], [records[i] for i in order[n_answers:]]
    with VectorMemory(home, embedder=default_embedder()) as memory:
        report = memory.ingest(kept, tenant=TENANT)
        key, _ = memory.store.create_key(tenant=TENANT, name="bench")
        answers, corrections = [], {}
        said = sorted({m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"})
        rng = random.Random(0)
        for i, rec in enumerate(held):
            user, answer = _turns(rec)
            iid = f"held-{i}"
            memory.log_answer(tenant=TENANT, interaction_id=iid, messages=[{"role": "user", "content": user}],
                              answer=answer, hits=memory.search(user, 8, tenant=TENANT), user=rec.get("user"))
            answers.append(iid)
            corrections[iid] = rng.choice([a for a in said if a != answer] or [f"not {answer}"])  # another answer
        q, a = _turns(held[0])
        hits = memory.search(q, 8, tenant=TENANT)
        overhead_ids: dict[str, list[str]] = {"http": [], "raw": [], "inprocess": []}
        for side, ids in overhead_ids.items():
            for i in range(n_overhead + WARMUP):
                ids.append(f"ovh-{side}-{i}")
                memory.log_answer(tenant=TENANT, interaction_id=ids[-1], messages=[{"role": "user", "content": q}],
                                  answer=a, hits=hits)
        queries = [_turns(r)[0] for r in kept]
        random.Random(0).shuffle(queries)
    return Prepared(key, answers, corrections, queries, q, overhead_ids, report.experiences,
                    time.perf_counter() - started)


def _turns(rec: dict[str, Any]) -> tuple[str, str]:
    """(first user turn, first assistant answer) of a record."""
    msgs = rec["messages"]
    user = next(m["content"] for m in msgs if m["role"] == "user")
    return user, next((m["content"] for m in msgs if m["role"] == "assistant"), "OK")


def model_folder(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    from logmem.model.loading import bundled_gguf_path, convert_gguf

    return convert_gguf(bundled_gguf_path(), home=Path(args.cache))


# --- the server ----------------------------------------------------------------------------------
def server(home: Path, model: Path, clients: int, log: Path, extra_env: dict[str, str],
           timeout: float = 120.0) -> Any:
    """The real service in its own process on a free loopback port; yields its base URL."""
    env = {**os.environ, **extra_env, "LOGMEM_HOME": str(home), "LOGMEM_MODEL": str(model), "LOGMEM_WORKER": "false",
           "LOGMEM_DTYPE": "float32", "LOGMEM_MAX_CONCURRENT": str(max(clients, 2))}
    return logmem_server(env, log, timeout)


# --- load ----------------------------------------------------------------------------------------
Send = Callable[[httpx.AsyncClient, int], Any]  # (client, n-th request) -> coroutine of one request's httpx.Response


async def load(base: str, key: str, route: str, clients: int, duration: float, send: Send,
               timeout: float = 300.0) -> Phase:
    """`clients` concurrent loops of `send` for `duration` s (requests in flight at the end complete)."""
    phase = Phase(route, clients, 0.0)
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
                                 limits=limits) as client:
        started = time.perf_counter()
        stop = started + duration

        async def loop() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await send(client, next(counter))
                    status, body = r.status_code, r.text
                except httpx.HTTPError as exc:
                    status, body = 0, repr(exc)
                phase.latencies_ms.append((time.perf_counter() - t0) * 1e3)
                phase.statuses.append(status)
                if not 200 <= status < 300 and len(phase.notes.setdefault("error_samples", [])) < 5:
                    phase.notes["error_samples"].append(f"{status}: {body[:300]}")

        await asyncio.gather(*(loop() for _ in range(clients)))
        phase.duration_s = time.perf_counter() - started
    phase.notes["load_avg_1min_after"] = os.getloadavg()[0]  # other processes share these cores
    return phase


def search_sender(queries: list[str]) -> Send:
    async def send(client: httpx.AsyncClient, n: int) -> httpx.Response:
        return await client.get("/v1/memory/search", params={"q": queries[n % len(queries)], "k": K})

    return send


def chat_sender(queries: list[str], max_tokens: int, ids: list[str], tokens: list[int]) -> Send:
    async def send(client: httpx.AsyncClient, n: int) -> httpx.Response:
        body = {"model": "default", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": queries[n % len(queries)]}]}
        r = await client.post("/v1/chat/completions", json=body)
        if r.status_code == 200:
            out = r.json()
            ids.append(out["id"])
            tokens.append(out["usage"]["prompt_tokens"])
        return r

    return send


class FeedbackEvents:
    """Feedback events over a pool of served answers: round r gives every answer its r-th event (kinds drawn
    from FIRST_KINDS, then LATER_KINDS). An acknowledged event is sent again (RETRY_P) with its event id, as
    the next request of whichever client comes first: a retry after a lost response."""

    def __init__(self, answers: list[str], corrections: dict[str, str], later: dict[str, float] | None = None,
                 seed: int = 0) -> None:
        self.answers, self.corrections, self.later = answers, corrections, later or LATER_KINDS
        self.rng = random.Random(seed)
        self.round = 0
        self.sent: dict[str, tuple[str, str]] = {}  # event id -> (answer id, kind), acknowledged (2xx)
        self.pending: list[tuple[str, dict[str, Any]]] = []  # acknowledged events to send again
        self.retries = self.retries_flagged = self.new_flagged = 0

    def event(self, n: int) -> tuple[str, dict[str, Any]]:
        iid = self.answers[n % len(self.answers)]
        self.round = n // len(self.answers)
        kinds = FIRST_KINDS if self.round == 0 else self.later
        kind = self.rng.choices(list(kinds), weights=list(kinds.values()))[0]
        body: dict[str, Any] = {"kind": kind, "event_id": f"{iid}-e{self.round}"}
        if kind == "rating":
            body["value"] = self.rng.randint(1, 5)
        if kind == "correction":
            body["text"] = self.corrections.get(iid) or self.rng.choice(list(self.corrections.values()) or ["OK"])
        return iid, body

    def sender(self) -> Send:
        fresh = iter(range(10**9))

        async def send(client: httpx.AsyncClient, _: int) -> httpx.Response:
            retry = bool(self.pending)
            iid, body = self.pending.pop(0) if retry else self.event(next(fresh))
            r = await client.post(f"/v1/interactions/{iid}/feedback", json=body)
            if r.status_code != 200:
                return r
            duplicate = bool(r.json()["duplicate"])
            if retry:
                self.retries += 1
                self.retries_flagged += duplicate
            else:
                self.sent[body["event_id"]] = (iid, body["kind"])
                self.new_flagged += duplicate  # must stay 0: each new event id is new to the server
                if self.rng.random() < RETRY_P:
                    self.pending.append((iid, body))
            return r

        return send


# --- nothing lost ---------------------------------------------------------------------------------
def check_sql(home: Path, events: FeedbackEvents, chat_ids: list[str]) -> dict[str, Any]:
    """Counts read back from SQL: every acknowledged event and chat answer is there, exactly once."""
    from sqlalchemy import bindparam, create_engine, text

    engine = create_engine(f"sqlite:///{home / 'memory.db'}")
    judged = sorted({iid for iid, _ in events.sent.values()})
    pks = text("SELECT id FROM interactions WHERE tenant = :t AND ext_id IN :ids").bindparams(
        bindparam("ids", expanding=True))
    try:
        with engine.connect() as c:
            ids = [r[0] for r in c.execute(pks, {"t": TENANT, "ids": judged or [""]})]
            event_rows = c.execute(text("SELECT count(*) FROM feedback_events WHERE interaction_id IN :pks")
                                   .bindparams(bindparam("pks", expanding=True)), {"pks": ids or [-1]}).scalar()
            fb_rows = c.execute(text("SELECT count(*) FROM feedback WHERE interaction_id IN :pks").bindparams(
                bindparam("pks", expanding=True)), {"pks": ids or [-1]}).scalar()
            chats = c.execute(text("SELECT count(*) FROM answers a JOIN interactions i ON i.id = a.interaction_id "
                                   "WHERE i.tenant = :t AND i.ext_id IN :ids").bindparams(
                bindparam("ids", expanding=True)), {"t": TENANT, "ids": chat_ids or [""]}).scalar()
    finally:
        engine.dispose()
    distinct = len(events.sent)
    return {"feedback_events_sent": distinct, "feedback_retries_sent": events.retries,
            "feedback_events_rows": int(event_rows or 0), "feedback_rows_of_judged": int(fb_rows or 0),
            "retries_answered_duplicate": events.retries_flagged, "new_events_answered_duplicate":
                events.new_flagged, "chat_answers_ok": len(chat_ids), "chat_answers_rows": int(chats or 0),
            "nothing_lost": (event_rows == distinct and fb_rows == distinct and events.new_flagged == 0
                             and events.retries_flagged == events.retries and chats == len(chat_ids))}


# --- output --------------------------------------------------------------------------------------
def load_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| route | clients | duration | requests | req/s | p50 ms | p95 ms | errors |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['route']} | {r['clients']} | {r['duration_s']:.1f} s | {r['requests']} | {r['req_per_s']:.1f} | "
              f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['errors']} |" for r in rows]
    return "\n".join(lines)


def plot(path: Path, phases: list[Phase], http: dict[str, list[float]], inproc: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for ph in phases:
        lat = np.sort(ph.latencies_ms)
        a.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=f"{ph.route} ({ph.clients} clients)")
    a.set(xscale="log", xlabel="latency ms (log)", ylabel="fraction of requests", title="under load (CDF)")
    for call, style in (("search", "-"), ("feedback", "--")):
        for side, data in (("HTTP", http), ("in-process", inproc)):
            lat = np.sort(data[call])
            b.plot(lat, np.arange(1, len(lat) + 1) / len(lat), style, label=f"{call}, {side}")
    b.set(xscale="log", xlabel="latency ms (log)", title="one client, sequential (CDF)")
    save_figure(fig, [a, b], path)


def environment() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "cores": os.cpu_count(), "machine": platform.machine(),
            "torch_threads": torch.get_num_threads(), "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "httpx": httpx.__version__}


def write_markdown(out: Path, result: dict[str, Any]) -> str:
    env, prep, lost = result["environment"], result["prepared"], result["nothing_lost"]
    text = "\n".join([
        "# Service under load, and HTTP overhead", "",
        f"Data: {prep['logs']} ({prep['records']} records): {prep['ingested']} ingested under one tenant "
        f"({prep['experiences']} experiences), {prep['held_out']} held out and logged as served answers to judge. "
        f"Server: one uvicorn process (`{result['server_command']}`), SQLite home, model {prep['model']} "
        f"(float32, CPU), LOGMEM_MAX_CONCURRENT={result['max_concurrent']}, no job worker, extra environment "
        f"{result['server_env'] or 'none'}. Clients: one httpx "
        f"AsyncClient in the benchmark process, on the same {env['cores']} cores as the server "
        f"(python {env['python']}; torch at its default threads ({env['torch_threads']}) and faiss at the memory's "
        f"`search_threads` (1) per search, in both processes, unless the extra environment says otherwise). "
        f"Other processes of the machine were paused during the run. Load average "
        f"{result['load_avg_start'][0]:.2f} at start, "
        f"{result['load_avg_end'][0]:.2f} at end; whole run {result['wall_s']:.0f} s{result['mode']}.", "",
        f"## Under load ({result['args']['duration']:.0f} s per route)", "", load_table(result["load"]), "",
        f"Chat: max_tokens {result['args']['max_tokens']}, mean prompt "
        f"{result['load_notes']['chat_prompt_tokens_mean']:.0f} tokens. Feedback: events drawn "
        f"{FIRST_KINDS} for an answer's first and {result['later_kinds']} for later ones, {RETRY_P:.0%} of "
        f"acknowledged events sent again with the same event id (counted in requests).", "",
        "Nothing lost (counts from SQL after the run): "
        f"{lost['feedback_events_sent']} distinct events acknowledged, {lost['feedback_events_rows']} feedback_events "
        f"rows, {lost['feedback_rows_of_judged']} feedback rows on the judged answers; {lost['feedback_retries_sent']} "
        f"retries, {lost['retries_answered_duplicate']} answered `duplicate`; {lost['chat_answers_ok']} chat answers, "
        f"{lost['chat_answers_rows']} answers rows: **{'nothing lost' if lost['nothing_lost'] else 'MISMATCH'}**.", "",
        "## HTTP overhead (one client, sequential, warm)", "", overhead_table(result["overhead"]), "",
        "After the load phases, in interleaved triplets (each side first in turn), one call at a time: HTTP "
        "through a keep-alive httpx.Client and through the standard library's http.client (the lightest client: "
        "what remains is the service's own path) to the otherwise idle server, and `Runtime.search` / "
        "`Runtime.feedback` on a runtime in the benchmark process over the same home, all from one worker thread. "
        "Overhead = HTTP p50 - in-process p50: the client's work, loopback, uvicorn (httptools when installed), "
        "FastAPI, the key check (an SQL read at most every `key_cache_seconds` per key), the threadpool hop. "
        "The target is judged on the http.client rows: the httpx rows differ from them by httpx's own time per "
        "call, which is the client's, not the service's.", ""])
    (out / "service.md").write_text(text)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", default="data/nfcats/logs.jsonl",
                   help="native-schema JSONL to ingest (any size >= 10 records) (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--quick", action="store_true", help=f"CI sizes: {QUICK}")
    for name, value in FULL.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None, help=f"default {value}")
    p.add_argument("--model", help="a converted model folder (default: convert the bundled GGUF into --cache)")
    p.add_argument("--cache", default="benchmarks/results/cache", help="where the converted model is kept")
    p.add_argument("--home", help="the service's home (default: a temporary folder, removed after)")
    p.add_argument("--later-kinds", type=_kinds, default=dict(LATER_KINDS),
                   help="kind:weight,... of an answer's later feedback events (default %(default)s)")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the server process only (e.g. OMP_NUM_THREADS=1); repeatable")
    args = p.parse_args(argv)
    args.server_env = dict(item.split("=", 1) for item in args.server_env)
    return sized(args, FULL, QUICK)


def _kinds(text: str) -> dict[str, float]:
    return {kind: float(weight) for kind, _, weight in (part.partition(":") for part in text.split(","))}


def run_load(base: str, prep: Prepared, args: argparse.Namespace,
             stages: dict[str, float]) -> tuple[list[Phase], FeedbackEvents, list[str], list[int]]:
    """Warm the server, then load search, chat and feedback one after the other."""
    t0 = time.perf_counter()
    headers = {"Authorization": f"Bearer {prep.key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        for q in prep.queries[:5]:
            client.get("/v1/memory/search", params={"q": q, "k": K}).raise_for_status()
        client.post("/v1/chat/completions", json={"model": "default", "max_tokens": args.max_tokens, "messages": [
            {"role": "user", "content": prep.queries[-1]}]}).raise_for_status()  # loads the model
    stages["warmup_s"] = time.perf_counter() - t0
    chat_ids: list[str] = []
    tokens: list[int] = []
    phases = [asyncio.run(load(base, prep.key, "GET /v1/memory/search", args.clients, args.duration,
                               search_sender(prep.queries))),
              asyncio.run(load(base, prep.key, "POST /v1/chat/completions", args.clients, args.duration,
                               chat_sender(prep.queries[::-1], args.max_tokens, chat_ids, tokens)))]
    events = FeedbackEvents(prep.answers + chat_ids, prep.corrections, args.later_kinds)
    phases.append(asyncio.run(load(base, prep.key, "POST /v1/interactions/{id}/feedback", args.clients,
                                   args.duration, events.sender())))
    phases[2].notes.update(answers_judged=len(events.answers), rounds=events.round + 1, retries=events.retries)
    return phases, events, chat_ids, tokens


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_start = time.perf_counter(), os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model_folder(args)
    records = read_records(Path(args.logs))
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        home = Path(args.home) if args.home else Path(tmp) / "home"
        prep = prepare_home(home, records, args.answers, args.overhead_n)
        stages["prepare_s"] = prep.prepare_s
        print(f"prepared {home} in {prep.prepare_s:.1f} s: {prep.experiences} experiences, "
              f"{len(prep.answers)} answers to judge", flush=True)
        t0 = time.perf_counter()
        with server(home, model, args.clients, Path(tmp) / "server.log", args.server_env) as base:
            stages["server_start_s"] = time.perf_counter() - t0
            phases, events, chat_ids, tokens = run_load(base, prep, args, stages)
            lost = check_sql(home, events, chat_ids)
            t0 = time.perf_counter()
            series = overhead(base, home, model, prep, args.overhead_n)
            http, inproc = series["http"], series["inprocess"]
            stages["overhead_s"] = time.perf_counter() - t0
        server_log = (Path(tmp) / "server.log").read_text(errors="replace")[-5000:]
    result = {
        "args": {k: v for k, v in vars(args).items() if k in FULL}, "quick": args.quick,
        "mode": " (--quick)" if args.quick else "",
        "server_command": "python -m uvicorn logmem.api.app:create_app --factory --host 127.0.0.1 --port P "
                          "--no-access-log --log-level warning",
        "later_kinds": args.later_kinds, "server_env": args.server_env, "max_concurrent": max(args.clients, 2),
        "environment": environment(),
        "prepared": {"logs": args.logs, "records": len(records), "held_out": len(prep.answers),
                     "ingested": len(records) - len(prep.answers), "experiences": prep.experiences,
                     "model": model.name, "prepare_s": prep.prepare_s},
        "load": [p.summary() for p in phases],
        "load_notes": {"chat_prompt_tokens_mean": float(np.mean(tokens)) if tokens else float("nan")},
        "nothing_lost": lost, "overhead": overhead_rows(http, inproc, series["raw"]),
        "latencies_ms": {"load": {p.route: p.latencies_ms for p in phases}, "http": http, "raw": series["raw"],
                         "inprocess": inproc},
        "load_avg_start": load_start, "load_avg_end": os.getloadavg(), "wall_s": time.perf_counter() - started,
        "stages": stages, "server_log_tail": server_log,
    }
    (out / "service.json").write_text(json.dumps(result, indent=1))
    plot(out / "service.png", phases, http, inproc)
    print(write_markdown(out, result))
    errors = sum(r["errors"] for r in result["load"])
    return 0 if errors == 0 and lost["nothing_lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
