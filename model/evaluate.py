"""The quality harness: answer eval items in several modes and score them against references.

Eval lines are `{"id", "messages": [...], "reference": ["..."]}`. A prediction counts when its first line,
lowercased, stripped of punctuation and of a leading `label:`/`answer:`, equals a reference so normalised.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
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
from .scoring import contains_reference, is_correct, normalize_answer

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
    contained: int = 0  # answers that contain a reference (free text: `contains_reference`)
    retrieval_ms: list[float] = field(default_factory=list)
    prompt_ms: list[float] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def containment(self) -> float:
        return self.contained / self.n if self.n else 0.0

    def summary(self) -> dict[str, Any]:
        def med(x: list[float] | list[int]) -> float:
            return float(statistics.median(x)) if x else 0.0

        return {"mode": self.mode, "n": self.n, "correct": self.correct, "accuracy": round(self.accuracy, 4),
                "contains": round(self.containment, 4),
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


Answered = tuple[str, list[int], dict[str, float]]  # (answer, experience ids used, timings)
Answers = Callable[[str, Sequence[EvalItem]], list[Answered]]  # (mode, items) -> one Answered per item


def check_modes(modes: Iterable[str]) -> None:
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")


def score(answers: Answers, memory: VectorMemory, items: Sequence[EvalItem], *, modes: Sequence[str],
          tenant: str = "default", predictions: str | Path | None = None, batch_size: int = 1,
          progress: bool = False) -> list[ModeResult]:
    """Answer every item in each mode (`knn` here, the others by `answers`, `batch_size` items a call) and score the
    answers; write one prediction line per (item, mode) to `predictions`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_modes(modes)
    results = []
    out = Path(predictions).open("w", encoding="utf-8") if predictions else None
    try:
        for mode in modes:
            res = ModeResult(mode)
            bar = tqdm(total=len(items), desc=f"eval {mode}", unit="q", disable=not progress)
            for i in range(0, len(items), batch_size):
                batch = items[i:i + batch_size]
                answered = _knn(memory, batch, tenant) if mode == "knn" else answers(mode, batch)
                for item, (output, used, timing) in zip(batch, answered):
                    ok = is_correct(output, item.reference)
                    res.n += 1
                    res.correct += ok
                    res.contained += contains_reference(output, item.reference)
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


def evaluate(model: Any, tokenizer: Any, memory: VectorMemory, items: Sequence[EvalItem], *,
             modes: Iterable[str], config: GeneratorConfig | None = None, tenant: str = "default",
             max_new_tokens: int = 16, predictions: str | Path | None = None, adapter: str | Path | None = None,
             batch_size: int = 1, progress: bool = False) -> list[ModeResult]:
    """The harness for a model in hand (the Python API; `logmem eval` answers through the runtime's answer operation
    instead): every item answered in each mode by `MemoryGenerator`s over `model`, scored by `score`.

    The adapter modes run last, on `model` with the LoRA adapter at `adapter` merged into its weights (so
    `model` is changed for good: pass a fresh copy if the base is needed afterwards). `batch_size` > 1
    answers that many items in one left-padded generation (much faster on a CPU; a reply's model time is
    then its share of the batch's).
    """
    config = config or GeneratorConfig()
    modes = list(modes)
    check_modes(modes)
    kinds = {m: served_mode(memory, tenant).mode if m == "default" else m for m in modes}  # default: the served one
    ordered = [m for m in modes if kinds[m] not in ADAPTER_MODES] + [m for m in modes if kinds[m] in ADAPTER_MODES]
    if adapter is None and any(kinds[m] in ADAPTER_MODES for m in modes):
        raise ConfigError("the modes consolidated and memory+adapter need an active adapter "
                          "(run `logmem consolidate` first)")
    generators: dict[str, MemoryGenerator] = {}

    def answers(mode: str, batch: Sequence[EvalItem]) -> list[Answered]:
        nonlocal model, adapter
        if mode not in generators:
            if kinds[mode] in ADAPTER_MODES and adapter is not None:
                model, adapter = load_adapter(model, adapter, merge=True), None  # for the modes after
            generators[mode] = _generator(kinds[mode], model, tokenizer, memory, config, tenant)
        replies = generators[mode].chat_many([item.messages for item in batch], max_new_tokens=max_new_tokens,
                                             log=False)
        return [answered(r) for r in replies]

    return score(answers, memory, items, modes=ordered, tenant=tenant, predictions=predictions,
                 batch_size=batch_size, progress=progress)


def answered(reply: Any) -> Answered:
    """A `Reply`'s (answer, experience ids used, timings)."""
    return (reply.text, [h.id for h in reply.experiences],
            {"retrieval_ms": reply.retrieval_ms, "prompt_ms": reply.prompt_ms, "model_ms": reply.model_ms,
             "prompt_tokens": reply.prompt_tokens})


def _generator(mode: str, model: Any, tokenizer: Any, memory: VectorMemory, config: GeneratorConfig,
               tenant: str) -> MemoryGenerator:
    if mode in ("base", "consolidated"):
        return MemoryGenerator(model, tokenizer, None, config=config, tenant=tenant)
    return MemoryGenerator(model, tokenizer, memory, tenant=tenant,
                           config=replace(config, choose=mode if mode in ("vote", "auto") else "off"))


def _knn(memory: VectorMemory, items: Sequence[EvalItem], tenant: str) -> list[Answered]:
    """The kNN vote's answer to each item (no model)."""
    answers: list[Answered] = []
    for item in items:
        t0 = time.perf_counter()
        answer = knn_vote(memory, item, tenant=tenant)
        answers.append((answer, [], {"retrieval_ms": (time.perf_counter() - t0) * 1e3}))
    return answers


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


def markdown_table(results: Sequence[ModeResult], answer_ms: float | None = None, *, contains: bool = False) -> str:
    """The results as a Markdown table; with `contains`, a column of answers that contain a reference (free text)."""
    extra = " contains |" if contains else ""
    lines = ["| mode | n | accuracy |" + extra + " retrieval ms (p50) | prompt ms (p50) | model ms (p50) | "
             "prompt tokens (p50) |", "|---|---|---|" + ("---|" if contains else "") + "---|---|---|---|"]
    for r in results:
        s = r.summary()
        cell = f" {s['contains']:.3f} |" if contains else ""
        lines.append(f"| {s['mode']} | {s['n']} | {s['accuracy']:.3f} |{cell} {s['retrieval_ms_p50']:.1f} | "
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
