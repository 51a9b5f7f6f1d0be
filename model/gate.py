"""The consolidation gate: whether a trained adapter is promoted. It must beat a reference on the held-out slice
(the bare base model, or the mode the tenant is served now: `ServingGate`) without raising general-text perplexity
past a bound; the same measurement picks the student a job trains and the mode to serve next."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from logmem.memory import VectorMemory

from .config import ConsolidationConfig, GeneratorConfig
from .modes import ADAPTER_MODES, AUTO, MEMORY_MODES, HeldOut, beats, best_mode, served_mode
from .reading import HeldOutNll

logger = logging.getLogger(__name__)
PROBE = Path(__file__).parent / "probe" / "general.txt"


@torch.no_grad()
def probe_perplexity(model: Any, tokenizer: Any, text: str | None = None, window: int = 256) -> float:
    """Perplexity on a fixed general text (model/probe/general.txt): what must not regress."""
    ids = tokenizer(text if text is not None else PROBE.read_text(), add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    for i in range(0, max(len(ids) - 1, 1), window):
        chunk = torch.tensor([ids[i:i + window + 1]], device=model.device)
        if chunk.shape[1] < 2:
            break
        logits = model(input_ids=chunk[:, :-1]).logits[0]
        total += torch.nn.functional.cross_entropy(logits.float(), chunk[0, 1:], reduction="sum").item()
        count += chunk.shape[1] - 1
    return math.exp(total / max(count, 1))


def gate(reference: float, student: float, base_ppl: float, student_ppl: float, config: ConsolidationConfig,
         *, metric: str = "nll", against: str = "base") -> tuple[bool, str]:
    """Promote when the student's held-out figure beats `reference` (`against` names it: the bare base model, or
    the tenant's served mode) by the margin (`gate_margin` for NLL, `accuracy_margin` for accuracy), and probe
    perplexity rises by at most `probe_bound`."""
    margin = config.accuracy_margin if metric == "accuracy" else config.gate_margin
    if not beats(student, reference, metric, margin):
        if metric == "accuracy":
            return False, (f"held-out accuracy {student:.4f} does not beat {against} {reference:.4f}"
                           + (f" by {margin:.0%}" if margin else ""))
        return False, f"held-out NLL {student:.4f} does not beat {against} {reference:.4f} by {margin:.0%}"
    if student_ppl > base_ppl * (1.0 + config.probe_bound):
        return False, (f"probe perplexity {student_ppl:.2f} is over base {base_ppl:.2f} "
                       f"by more than {config.probe_bound:.0%}")
    what = "accuracy" if metric == "accuracy" else "NLL"
    versus = "" if against == "base" else f" against {against}"
    return True, (f"held-out {what} {reference:.4f} -> {student:.4f}{versus}; "
                  f"probe perplexity {base_ppl:.2f} -> {student_ppl:.2f}")


def student_prompts(config: ConsolidationConfig) -> str:
    """The held-out prompts the student `config` trains reads: "with_memory" or "bare"."""
    return "with_memory" if config.with_memory else "bare"


def choose_student(model: Any, tokenizer: Any, held: HeldOut, config: ConsolidationConfig,
                   nll: HeldOutNll | None = None) -> tuple[ConsolidationConfig, dict[str, Any]]:
    """The student a job trains when nobody said: the memory+adapter student where the retrieved experiences
    lower the base model's response NLL on the held-out slice by more than `gate_margin` (the memory carries
    what the answers need, so a student that keeps reading it learns to use it: on NFCats it answered 0.927 of
    dev against the bare student's 0.869), the bare student otherwise (one prompt's worth of tokens per example,
    ~4x cheaper to train and to serve). `nll` (the job's) keeps the base model's figures for the rest of it."""
    nll = nll or HeldOutNll(held, tokenizer)
    figures = {"bare": nll(model, "base", "bare"), "with_memory": nll(model, "base", "with_memory")}
    with_memory = figures["with_memory"] < figures["bare"] * (1.0 - config.gate_margin)
    reason = (f"held-out response NLL of the base model {figures['bare']:.4f} bare, {figures['with_memory']:.4f} "
              f"with the memory: {'a memory+adapter' if with_memory else 'a bare'} student")
    logger.info("consolidation of %d held-out experiences: %s", len(held.experiences), reason)
    return replace(config, with_memory=with_memory), {**figures, "with_memory_student": with_memory, "reason": reason}


class ServingGate:
    """A job's measurement of the serving modes on its held-out slice (model/modes.py): the base model's memory
    and vote, the active adapter's modes, the student's; the gate against the served one; the winner."""

    def __init__(self, model: Any, tokenizer: Any, memory: VectorMemory, tenant: str, held: HeldOut,
                 config: ConsolidationConfig, progress: bool, nll: HeldOutNll | None = None) -> None:
        self.tokenizer, self.config, self.progress = tokenizer, config, progress
        self.gen_config = GeneratorConfig(k=config.teacher_k)
        self.held = held
        self.nll = nll or HeldOutNll(held, tokenizer, self.gen_config, progress=progress)
        self.metric = self.held.metric
        self.served = served_mode(memory, tenant)
        self.base = self._measure(model, MEMORY_MODES, "base")
        self.active: dict[str, float] = {}
        self.active_version: str | None = None
        self.student: dict[str, float] = {}

    def _measure(self, model: Any, modes: Sequence[str], who: str) -> dict[str, float]:
        return self.nll.figures(model, who, modes)

    def measure_active(self, loaded: Any, version: str) -> None:
        self.active, self.active_version = self._measure(loaded, ADAPTER_MODES, "active"), version

    def current(self) -> tuple[str, float]:
        """The mode the tenant is served now (auto resolved by the answers' kind) and its figure."""
        mode = self.served.mode
        if mode == AUTO:
            mode = "vote" if self.metric == "accuracy" else "memory"
        figures = self.active if mode in ADAPTER_MODES else self.base
        if mode not in figures:  # an adapter mode whose adapter was not measured: the best without one
            mode = best_mode(self.base, self.metric)
            figures = self.base
        return mode, figures[mode]

    def judge(self, adapter: Any, base_ppl: float, student_ppl: float) -> tuple[bool, str]:
        """The gate: the student's best mode against the served mode's figure (and the probe bound)."""
        self.student = self._measure(adapter, ADAPTER_MODES, "student")
        mode, figure = self.current()
        best = best_mode(self.student, self.metric)
        against = f"the served mode {mode}" + (f" ({self.active_version})" if mode in ADAPTER_MODES else "")
        promoted, reason = gate(figure, self.student[best], base_ppl, student_ppl, self.config, metric=self.metric,
                                against=against)
        return promoted, f"{reason} (the student's best mode: {best})"

    def winner(self, promoted: bool) -> dict[str, Any]:
        """The mode to serve from now on: the best of memory, the vote and the adapter modes of the adapter that
        is active after this job (the student when promoted), with every figure measured."""
        pool = {**self.base, **(self.student if promoted else self.active)}
        mode = best_mode(pool, self.metric)
        before, figure = self.current()
        shown = ", ".join(f"{m} {v:.4f}" for m, v in pool.items())
        return {"mode": mode, "metric": self.metric, "figures": pool, "holdout": len(self.held.experiences),
                "base": self.base, "active": self.active, "active_version": self.active_version,
                "student": self.student, "served_before": before, "served_before_figure": figure,
                "reason": f"best held-out {self.metric} on {len(self.held.experiences)} experiences: {shown}"}
