"""How fast does the service protect itself? A prompt too long is refused, a client that goes away gives its
generation slot back, and SIGTERM ends a server with a generation in flight.

    python benchmarks/bench_limits.py --out benchmarks/results [--quick]

One real server process (`uvicorn logmem.api.app:create_app --factory` on loopback, the bundled SmolLM2-135M, float32,
SQLite, one generation at a time per key), and a client in this process:
1. **Refused prompts**: `--refusals` requests of a 990 KB message (198,000 words, under the 1 MB body limit; refused
   by its length alone), then as many of a 300 KB message (between the length bounds: its tokens are counted).
   Client-side latency of each 400.
2. **A client that goes away**: a request for `--new-tokens` tokens is sent on a raw socket (streamed: its first
   chunk read; whole: a second after sending), then the socket is closed. From then on the same key asks for one
   token every 20 ms until it is not refused with 429: the time to that request is the time the slot took to be
   given back (the generation stops at its next token once the server sees the client gone).
3. **SIGTERM**: a streamed generation of `--new-tokens` tokens, its first chunk read, then SIGTERM; the time until the
   process has exited, for each `--bounds` value of `shutdown_seconds`.

Writes `limits.json` and `limits.md` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import logmem_process  # noqa: E402

QUESTION = "Write a long story about a lighthouse keeper and the sea, with many chapters."


def server(home: Path, model: Path, log: Path, **env: str) -> Any:
    """The service over `model` in its own process (one generation at a time per key); yields (process, base URL)."""
    full = {**os.environ, "LOGMEM_HOME": str(home), "LOGMEM_MODEL": str(model), "LOGMEM_DTYPE": "float32",
            "LOGMEM_WORKER": "false", "LOGMEM_MAX_CONCURRENT": "1", "LOGMEM_MAX_TOKENS": "4096", **env}
    return logmem_process(full, log, timeout=300)


def make_key(home: Path) -> str:
    from logmem.memory.store import Store

    home.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{home / 'memory.db'}")
    try:
        return store.create_key(tenant="bench")[0]
    finally:
        store.close()


def body(content: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {"model": "default", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": content}]}


def refusals(base: str, key: str, n: int) -> dict[str, dict[str, float]]:
    out = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        for name, content in (("990 KB (by its length)", "word " * 198_000), ("300 KB (counted)", "word " * 60_000)):
            ms = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = client.post("/v1/chat/completions", json=body(content, 8))
                ms.append((time.perf_counter() - t0) * 1e3)
                assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
            out[name] = summary(ms)
    return out


def abandoned(base: str, key: str, new_tokens: int, stream: bool) -> float:
    """Seconds from closing the socket of a generation in flight to the key's slot being free again."""
    host, port = base.removeprefix("http://").split(":")
    data = json.dumps(body(QUESTION, new_tokens, stream)).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {key}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    if stream:
        while b"data: {" not in sock.recv(65536):
            pass
    else:
        time.sleep(1.0)
    sock.close()
    gone = time.perf_counter()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        while True:
            sent = time.perf_counter()
            r = client.post("/v1/chat/completions", json=body("Hi", 1))
            if r.status_code != 429:
                assert r.status_code == 200, r.text
                return sent - gone
            time.sleep(0.02)


def sigterm(home: Path, model: Path, log: Path, key: str, new_tokens: int, bound: float) -> dict[str, Any]:
    with server(home, model, log, LOGMEM_SHUTDOWN_SECONDS=str(bound)) as (proc, base):
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
            client.post("/v1/chat/completions", json=body("Hi", 1))  # loaded
            with client.stream("POST", "/v1/chat/completions", json=body(QUESTION, new_tokens, True)) as r:
                lines = r.iter_lines()
                next(line for line in lines if line.startswith("data: {"))
                t0 = time.perf_counter()
                proc.send_signal(signal.SIGTERM)
                last = [line for line in lines if line.startswith("data: {")][-1:]
            proc.wait(timeout=120)
            exited = time.perf_counter() - t0
    return {"bound_s": bound, "exit_s": exited, "cancelled": bool(last and '"error"' in last[0])}


def summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"n": len(ms), "p50_ms": statistics.median(ms), "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
            "max_ms": ms[-1]}


def write_markdown(out: Path, result: dict[str, Any]) -> str:
    lines = ["# Limits that protect the server", "",
             f"`{result['command']}` · {result['environment']['cores']} cores · load average "
             f"{result['load_avg_start']:.2f} -> {result['load_avg_end']:.2f} · bundled SmolLM2-135M float32", "",
             "| refused prompt | n | p50 | p95 | max |", "|---|---|---|---|---|"]
    for name, s in result["refusals"].items():
        lines.append(f"| {name} | {s['n']} | {s['p50_ms']:.1f} ms | {s['p95_ms']:.1f} ms | {s['max_ms']:.1f} ms |")
    lines += ["", "| client goes away mid-generation | n | slot free again: p50 | max |", "|---|---|---|---|"]
    for name, s in result["abandoned"].items():
        lines.append(f"| {name} | {len(s)} | {statistics.median(s):.2f} s | {max(s):.2f} s |")
    lines += ["", "| SIGTERM, a streamed generation in flight | shutdown_seconds | exited after | stream cancelled |",
              "|---|---|---|---|"]
    for s in result["sigterm"]:
        lines.append(f"| | {s['bound_s']:.0f} s | {s['exit_s']:.2f} s | {'yes' if s['cancelled'] else 'no'} |")
    text = "\n".join(lines) + "\n"
    (out / "limits.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--model", type=Path, default=None, help="a model folder (default: the bundled SmolLM2)")
    parser.add_argument("--refusals", type=int, default=None)
    parser.add_argument("--trials", type=int, default=None, help="abandoned generations of each kind")
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--bounds", default=None, help="shutdown_seconds values, comma-separated")
    parser.add_argument("--quick", action="store_true", help="small counts (CI)")
    args = parser.parse_args(argv)
    args.refusals = args.refusals or (3 if args.quick else 20)
    args.trials = args.trials or (1 if args.quick else 5)
    bounds = [float(b) for b in (args.bounds or ("3" if args.quick else "10,3")).split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        key = make_key(home)
        if args.model is None:
            from logmem.model.loading import bundled_gguf_path, convert_gguf

            args.model = convert_gguf(bundled_gguf_path(), home=Path(tmp) / "models")
        log = Path(tmp) / "server.log"
        with server(home, args.model, log) as (_, base):
            httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json=body("Hi", 1), timeout=300)  # the model is loaded
            refused = refusals(base, key, args.refusals)
            gone = {f"{'streamed' if stream else 'whole'}": [abandoned(base, key, args.new_tokens, stream)
                                                             for _ in range(args.trials)] for stream in (False, True)}
        stopped = [sigterm(home, args.model, log, key, args.new_tokens, bound) for bound in bounds]
    result = {"command": "python benchmarks/bench_limits.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "environment": {"python": platform.python_version(), "cores": os.cpu_count()},
              "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0],
              "refusals": refused, "abandoned": gone, "sigterm": stopped}
    (args.out / "limits.json").write_text(json.dumps(result, indent=2))
    print(write_markdown(args.out, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
