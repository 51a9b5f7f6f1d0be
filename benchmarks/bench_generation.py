"""How fast does the local model generate, depending on the thread that asks?

    python benchmarks/bench_generation.py --out benchmarks/results [--quick] [--repeats N] [--tokens N]

torch keeps its intra-op thread count per calling thread. The same answer is asked of the runtime's answer operation
(`Runtime.answer`, the bundled model alone: no memory, nothing logged) from each place a logmem answer runs:
- `main`: the process's main thread (the CLI's `generate` and `chat`, `logmem eval`, a Python caller);
- `request thread`: one long-lived worker thread, as the service's thread pool runs a non-streamed answer;
- `fresh thread`: a thread started for the answer;
- `stream`: the answer streamed (a thread started for it, its tokens read in the main thread), as the service streams.
Each with `generation_threads` = the cores (what torch does unasked: the code before the setting) and = 0 (auto: the
cores less one), the configurations interleaved repeat by repeat so that all see the same machine. Reports tokens/s
(completion tokens over the generation's wall time), the median of the repeats, with the load average.

Writes `generation.json`, `generation.md` and `generation.png` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import save_figure, sized  # noqa: E402  # benchmarks/ is on sys.path when run as a script

PROMPT = "Write a long, detailed paragraph about how a vector index finds the nearest neighbours of a query."
PLACES = ("main", "request thread", "fresh thread", "stream")
FULL = {"repeats": 5, "tokens": 32}
QUICK = {"repeats": 1, "tokens": 4}


def _ask(runtime: Any, tokens: int) -> Any:
    from logmem.api.answering import Ask

    return Ask([{"role": "user", "content": PROMPT}], model=runtime.base_model, max_tokens=tokens, use_memory=False)


def one_answer(runtime: Any, caller: Any, place: str, tokens: int, pool: ThreadPoolExecutor) -> tuple[float, int]:
    """(generation seconds, completion tokens) of one answer asked from `place`."""
    started = time.perf_counter()
    if place == "main":
        answer = runtime.answer(caller, _ask(runtime, tokens))
    elif place == "request thread":
        answer = pool.submit(runtime.answer, caller, _ask(runtime, tokens)).result()
    elif place == "fresh thread":
        done: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: done.setdefault("a", runtime.answer(caller, _ask(runtime, tokens))))
        worker.start()
        worker.join()
        answer = done["a"]
    else:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(runtime.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        done = {}
        worker = threading.Thread(target=lambda: done.setdefault("a", runtime.answer(caller, _ask(runtime, tokens),
                                                                                      streamer=streamer)))
        worker.start()
        for _ in streamer:
            pass
        worker.join()
        answer = done["a"]
    return time.perf_counter() - started, answer.completion_tokens


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from logmem.api.answering import Caller
    from logmem.api.runtime import Runtime
    from logmem.api.settings import Settings

    cores = os.cpu_count() or 1
    settings = {"torch default (cores)": cores, "auto (0)": 0}
    caller = Caller("bench", None, admin=True)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as home:
        runtimes = {name: Runtime(Settings(home=Path(home), worker=False, generation_threads=n, model=args.model))
                    for name, n in settings.items()}
        times: dict[tuple[str, str], list[float]] = {}
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                for runtime in runtimes.values():  # load and warm each (the first answer loads the model)
                    for place in PLACES:
                        one_answer(runtime, caller, place, 4, pool)
                for _ in range(args.repeats):
                    for name, runtime in runtimes.items():
                        for place in PLACES:
                            seconds, tokens = one_answer(runtime, caller, place, args.tokens, pool)
                            times.setdefault((name, place), []).append(tokens / seconds)
        finally:
            for runtime in runtimes.values():
                runtime.close()
    rows = [{"setting": name, "threads": settings[name], "place": place,
             "tokens_per_s": statistics.median(times[name, place]), "runs": [round(x, 2) for x in times[name, place]]}
            for name in settings for place in PLACES]
    fresh = {name: next(r["tokens_per_s"] for r in rows if r["setting"] == name and r["place"] == "fresh thread")
             for name in settings}
    for r in rows:
        r["vs_fresh_thread"] = r["tokens_per_s"] / fresh[r["setting"]]
    import torch

    return {"rows": rows, "meta": {"repeats": args.repeats, "tokens": args.tokens, "cores": cores,
                                   "torch": torch.__version__, "python": platform.python_version(),
                                   "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
                                   "mode": "quick" if args.quick else "full"}}


def write(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "generation.json").write_text(json.dumps(result, indent=2))
    meta = result["meta"]
    lines = ["# Generation speed by the thread that asks", "",
             f"`python benchmarks/bench_generation.py --out {out}`{' --quick' if meta['mode'] == 'quick' else ''}: "
             f"a {meta['tokens']}-token greedy answer of the bundled model (float32, no memory) through the answer "
             f"operation, median of {meta['repeats']} interleaved repeats; {meta['cores']} cores, torch "
             f"{meta['torch']}; load average {meta['load_avg_start'][0]:.2f} at the start, "
             f"{meta['load_avg_end'][0]:.2f} at the end.", "",
             "| generation_threads | asked from | tokens/s | vs a fresh thread |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['place']} | {r['tokens_per_s']:.1f} | {r['vs_fresh_thread']:.2f} |"
              for r in result["rows"]]
    (out / "generation.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(dict.fromkeys(r["setting"] for r in result["rows"]))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [next(r["tokens_per_s"] for r in result["rows"] if r["setting"] == name and r["place"] == p)
                  for p in PLACES]
        ax.bar([j + i * width for j in range(len(PLACES))], values, width, label=f"generation_threads: {name}")
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(PLACES))], PLACES)
    ax.set(ylabel="tokens/s", title="the same answer, asked from each thread")
    save_figure(fig, [ax], out / "generation.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--model", default=None, help="a model folder or .gguf (default: the bundled SmolLM2)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--tokens", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    args = sized(p.parse_args(argv), FULL, QUICK)
    result = measure(args)
    write(args.out, result)
    print((args.out / "generation.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
