"""The service's HTTP overhead (`bench_service.py`'s second part): the same call, one at a time, over HTTP (httpx and
the lightest client, `http.client`) and on a `Runtime` in this process on the same home, in interleaved triples."""

from __future__ import annotations

import http.client
import itertools
import json
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

K = 5  # experiences per search request
WARMUP = 20  # untimed calls before each overhead series


# --- the series ------------------------------------------------------------------------------------
def overhead(base: str, home: Path, model: Path, prep: Any, n: int) -> dict[str, dict[str, list[float]]]:
    """Per-call ms of the same call over HTTP (one keep-alive client, the server otherwise idle) and on a
    `Runtime` in this process on the same home, in interleaved pairs (the order alternating), so that both
    sides see the same machine: other processes' load drifts, and on 2 cores it moves latencies far more than
    HTTP does. Both run in one worker thread, as the server runs its calls (`run_in_threadpool`)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_paired_series, base, home, model, prep, n).result()


def _paired_series(base: str, home: Path, model: Path, prep: Any, n: int) -> dict[str, dict[str, list[float]]]:
    from logmem.api.runtime import Runtime
    from logmem.api.settings import Settings

    runtime = Runtime(Settings(home=home, model=str(model), worker=False))
    caller = runtime.authenticate(prep.key)
    assert caller is not None
    http_ids, raw_ids, own_ids = (prep.overhead_ids[k] for k in ("http", "raw", "inprocess"))
    q = prep.overhead_query
    out: dict[str, dict[str, list[float]]] = {"http": {}, "raw": {}, "inprocess": {}}
    headers = {"Authorization": f"Bearer {prep.key}"}
    host, port = base.removeprefix("http://").split(":")
    raw = http.client.HTTPConnection(host, int(port), timeout=60)  # the lightest keep-alive client there is

    def raw_call(method: str, path: str, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else None
        raw.request(method, path, body=data, headers={**headers, "Content-Type": "application/json"})
        response = raw.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status}")

    search_path = "/v1/memory/search?" + urllib.parse.urlencode({"q": q, "k": K})
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        calls: dict[str, tuple[Callable[[int], Any], ...]] = {
            "search": (lambda i: client.get("/v1/memory/search", params={"q": q, "k": K}).raise_for_status(),
                       lambda i: raw_call("GET", search_path),
                       lambda i: runtime.search(caller, q, K)),
            "feedback": (lambda i: client.post(f"/v1/interactions/{http_ids[i]}/feedback", json={
                             "kind": "dislike", "event_id": f"{http_ids[i]}-ovh"}).raise_for_status(),
                         lambda i: raw_call("POST", f"/v1/interactions/{raw_ids[i]}/feedback",
                                            {"kind": "dislike", "event_id": f"{raw_ids[i]}-ovh"}),
                         lambda i: runtime.feedback(caller, own_ids[i], "dislike", event_id=f"{own_ids[i]}-ovh"))}
        try:
            for name, sides in calls.items():
                for i in range(WARMUP):
                    for call in sides:
                        call(i)
                times: list[list[float]] = [[], [], []]
                for i in range(WARMUP, WARMUP + n):
                    order = [(i + j) % 3 for j in range(3)]  # each side first, second and third in turn
                    for j in order:
                        t0 = time.perf_counter_ns()
                        sides[j](i)
                        times[j].append((time.perf_counter_ns() - t0) / 1e6)
                out["http"][name], out["raw"][name], out["inprocess"][name] = times
        finally:
            raw.close()
            runtime.close()
    return out


def overhead_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| call | n | HTTP p50 ms | in-process p50 ms | HTTP overhead p50 ms | p50 of paired differences ms "
             "| HTTP p95 ms | in-process p95 ms | target |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['call']} | {r['n']} | {r['http_p50_ms']:.2f} | {r['inprocess_p50_ms']:.2f} | "
              f"{r['overhead_p50_ms']:+.2f} | {r['paired_overhead_p50_ms']:+.2f} | {r['http_p95_ms']:.2f} | "
              f"{r['inprocess_p95_ms']:.2f} | "
              f"{_verdict(r)} |" for r in rows]
    return "\n".join(lines)


def _verdict(r: dict[str, Any]) -> str:
    """The 2 ms target is the service's own path: judged with the lightest client, where the client adds least.
    A heavier client library's own time per call (httpx: ~1.5 ms here) is shown beside it, not judged."""
    if not r["call"].endswith("http.client"):
        return "(client library's own time included)"
    return f"{'met' if r['overhead_p50_ms'] <= 2.0 else 'MISSED'} (<= 2 ms)"


def overhead_rows(http: dict[str, list[float]], inproc: dict[str, list[float]],
                  raw: dict[str, list[float]] | None = None) -> list[dict[str, Any]]:
    rows = []
    for (call, label), (client, series) in itertools.product(
            (("search", f"GET /v1/memory/search (same q, k={K})"),
             ("feedback", "POST /v1/interactions/{id}/feedback (dislike, a fresh answer each)")),
            (("httpx.Client", http), ("http.client", raw or {}))):
        if call not in series:
            continue
        h, p = np.array(series[call]), np.array(inproc[call])
        rows.append({"call": f"{label}, client {client}", "n": len(h), "http_p50_ms": float(np.median(h)),
                     "inprocess_p50_ms": float(np.median(p)), "overhead_p50_ms": float(np.median(h) - np.median(p)),
                     "paired_overhead_p50_ms": float(np.median(h - p)),
                     "http_p95_ms": float(np.percentile(h, 95)), "inprocess_p95_ms": float(np.percentile(p, 95))})
    return rows


