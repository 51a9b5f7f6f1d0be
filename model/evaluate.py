"""The quality harness: answer eval items in several modes and score them against references.

Eval lines are `{"id", "messages": [...], "reference": ["..."]}`. A prediction counts when its first line,
lowercased, stripped of punctuation and of a leading `label:`/`answer:`, equals a reference so normalised.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from logmem.memory import ConfigError, LogFormatError, VectorMemory
from logmem.memory.vocabulary import ADAPTER_MODES
from tqdm import tqdm

from .config import GeneratorConfig
from .generator import MemoryGenerator
from .loading import load_adapter
from .modes import served_mode
from .scoring import is_correct, normalize_answer

logger = logging.getLogger(__name__)
# knn: the embedding-vote reference, no model; auto: the vote where answers repeat, else memory; default: what the
# tenant is served when a request names no mode (model/modes.py)
MODES = ("base", "memory", "vote", "auto", "knn", *ADAPTER_MODES, "default")


@dataclass(frozen=True)
class EvalItem:
    id: str
    messages: list[dict[str, str]]
    reference: list[str]


def read_eval(path: str | Path) -> list[EvalItem]:
    """Read eval items; a malformed line raises a LogFormatError naming file, line and field."""
    items = []
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = {"source": str(path), "line": lineno}
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LogFormatError(f"invalid JSON: {exc.msg}", **where) from None
            messages, reference = obj.get("messages"), obj.get("reference")
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
                raise LogFormatError("expected a non-empty list of {role, content} messages", field="messages",
                                     **where)
            if isinstance(reference, str):
                reference = [reference]
            if not isinstance(reference, list) or not all(isinstance(r, str) for r in reference):
                raise LogFormatError("expected a list of reference answers", field="reference", **where)
            items.append(EvalItem(str(obj.get("id", lineno)), messages, reference))
    return items


@dataclass
class ModeResult:
    mode: str
    n: int = 0
    correct: int = 0
    retrieval_ms: list[float] = field(default_factory=list)
    prompt_ms: list[float] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def summary(self) -> dict[str, Any]:
        def med(x: list[float] | list[int]) -> float:
            return float(statistics.median(x)) if x else 0.0

        return {"mode": self.mode, "n": self.n, "correct": self.correct, "accuracy": round(self.accuracy, 4),
                "retrieval_ms_p50": round(med(self.retrieval_ms), 2), "prompt_ms_p50": round(med(self.prompt_ms), 2),
                "model_ms_p50": round(med(self.model_ms), 1), "prompt_tokens_p50": med(self.prompt_tokens)}


def knn_vote(memory: VectorMemory, item: EvalItem, *, k: int = 10, tenant: str = "default") -> str:
    """The similarity-weighted vote of the `k` nearest experiences' answers (the reference row)."""
    query = next((m["content"] for m in reversed(item.messages) if m.get("role") == "user"), "")
    votes: dict[str, float] = {}
    for h in memory.neighbours(query, k, tenant=tenant):
        key = normalize_answer(h.response)
        votes[key] = votes.get(key, 0.0) + max(h.cos, 0.0)
    return max(votes, key=lambda a: votes[a]) if votes else ""


def evaluate(model: Any, tokenizer: Any, memory: VectorMemory, items: Sequence[EvalItem], *,
             modes: Iterable[str], config: GeneratorConfig | None = None, tenant: str = "default",
             max_new_tokens: int = 16, predictions: str | Path | None = None, adapter: str | Path | None = None,
             batch_size: int = 1, progress: bool = False) -> list[ModeResult]:
    """Answer every item in each mode; write one prediction line per (item, mode) to `predictions`.

    The adapter modes run last, on `model` with the LoRA adapter at `adapter` merged into its weights (so
    `model` is changed for good: pass a fresh copy if the base is needed afterwards). `batch_size` > 1
    answers that many items in one left-padded generation (much faster on a CPU; a reply's model time is
    then its share of the batch's).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    config = config or GeneratorConfig()
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    kinds = {m: served_mode(memory, tenant).mode if m == "default" else m for m in modes}  # default: the served one
    ordered = [m for m in modes if kinds[m] not in ADAPTER_MODES] + [m for m in modes if kinds[m] in ADAPTER_MODES]
    if adapter is None and any(kinds[m] in ADAPTER_MODES for m in modes):
        raise ConfigError("the modes consolidated and memory+adapter need an active adapter "
                          "(run `logmem consolidate` first)")
    results = []
    out = Path(predictions).open("w", encoding="utf-8") if predictions else None
    try:
        for mode in ordered:
            if kinds[mode] in ADAPTER_MODES and adapter is not None:
                model, adapter = load_adapter(model, adapter, merge=True), None  # for the modes after
            gen = _generator(kinds[mode], model, tokenizer, memory, config, tenant)
            res = ModeResult(mode)
            bar = tqdm(total=len(items), desc=f"eval {mode}", unit="q", disable=not progress)
            for i in range(0, len(items), batch_size):
                batch = items[i:i + batch_size]
                for item, (output, used, timing) in zip(batch, _answers(mode, gen, memory, batch, tenant,
                                                                        max_new_tokens)):
                    ok = is_correct(output, item.reference)
                    res.n += 1
                    res.correct += ok
                    for key, value in timing.items():
                        getattr(res, key).append(value)
                    if out:
                        out.write(json.dumps({"id": item.id, "mode": mode, "output": output, "correct": ok,
                                              "experiences": used}, ensure_ascii=False) + "\n")
                bar.update(len(batch))
            bar.close()
            logger.info("%s: %d/%d = %.3f", mode, res.correct, res.n, res.accuracy)
            results.append(res)
    finally:
        if out:
            out.close()
    return results


def _generator(mode: str, model: Any, tokenizer: Any, memory: VectorMemory, config: GeneratorConfig,
               tenant: str) -> MemoryGenerator | None:
    if mode == "knn":
        return None
    if mode in ("base", "consolidated"):
        return MemoryGenerator(model, tokenizer, None, config=config, tenant=tenant)
    return MemoryGenerator(model, tokenizer, memory, tenant=tenant,
                           config=replace(config, choose=mode if mode in ("vote", "auto") else "off"))


def _answers(mode: str, gen: MemoryGenerator | None, memory: VectorMemory, items: Sequence[EvalItem], tenant: str,
             max_new_tokens: int) -> list[tuple[str, list[int], dict[str, float]]]:
    """(answer, experience ids used, timings) of each item: the kNN vote, or one batched `chat_many`."""
    if gen is None:
        answers: list[tuple[str, list[int], dict[str, float]]] = []
        for item in items:
            t0 = time.perf_counter()
            answer = knn_vote(memory, item, tenant=tenant)
            answers.append((answer, [], {"retrieval_ms": (time.perf_counter() - t0) * 1e3}))
        return answers
    replies = gen.chat_many([item.messages for item in items], max_new_tokens=max_new_tokens, log=False)
    return [(r.text, [h.id for h in r.experiences],
             {"retrieval_ms": r.retrieval_ms, "prompt_ms": r.prompt_ms, "model_ms": r.model_ms,
              "prompt_tokens": r.prompt_tokens}) for r in replies]


@torch.no_grad()
def greedy_answer_ms(model: Any, tokenizer: Any, *, new_tokens: int = 32, repeats: int = 3) -> float:
    """Median wall time of a `new_tokens`-token greedy answer to a short chat prompt (the overhead yardstick)."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Explain what a vector index is."}],
                                           tokenize=False, add_generation_prompt=True)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def eval_report(model: Any, tokenizer: Any, memory: VectorMemory, logs: str | Path, items: Sequence[EvalItem], *,
                modes: Sequence[str], config: GeneratorConfig | None = None, tenant: str = "default",
                max_new_tokens: int = 16, predictions: str | Path | None = None, batch_size: int = 1,
                progress: bool = False) -> tuple[list[ModeResult], dict[str, Any]]:
    """The whole harness: ingest `logs` (idempotent), answer `items` in each mode, time a 32-token answer."""
    report = memory.ingest_file(logs, progress=progress)
    active = memory.active_adapter(tenant)
    served = served_mode(memory, tenant).to_json() if "default" in modes else None
    answer_ms = greedy_answer_ms(model, tokenizer) if any(m in ("memory", "vote") for m in modes) else None
    results = evaluate(model, tokenizer, memory, items, modes=modes, config=config, tenant=tenant,
                       max_new_tokens=max_new_tokens, predictions=predictions, progress=progress,
                       adapter=active.path if active is not None else None, batch_size=batch_size)
    data = {"ingest": {k: v for k, v in report.to_json().items() if isinstance(v, int)},
            "results": [r.summary() for r in results], "greedy_32_tokens_ms": answer_ms,
            "config": vars(config or GeneratorConfig()), "adapter": active.version if active else None,
            "batch_size": batch_size, **({"serving_mode": served} if served else {})}
    return results, data


def markdown_table(results: Sequence[ModeResult], answer_ms: float | None = None) -> str:
    lines = ["| mode | n | accuracy | retrieval ms (p50) | prompt ms (p50) | model ms (p50) | prompt tokens (p50) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        s = r.summary()
        lines.append(f"| {s['mode']} | {s['n']} | {s['accuracy']:.3f} | {s['retrieval_ms_p50']:.1f} | "
                     f"{s['prompt_ms_p50']:.1f} | {s['model_ms_p50']:.0f} | {s['prompt_tokens_p50']:.0f} |")
    if answer_ms is not None:
        mem = [r for r in results if r.mode in ("memory", "vote")]
        if mem:
            s = mem[0].summary()
            share = (s["retrieval_ms_p50"] + s["prompt_ms_p50"]) / answer_ms
            lines.append("")
            lines.append(f"Retrieval + prompt assembly: {s['retrieval_ms_p50'] + s['prompt_ms_p50']:.1f} ms = "
                         f"{100 * share:.1f}% of a 32-token greedy answer ({answer_ms:.0f} ms).")
    return "\n".join(lines)
