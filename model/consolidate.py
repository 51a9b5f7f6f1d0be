"""Consolidation: train a LoRA adapter on what the memory holds, and gate it on held-out experiences.

Training pairs are (request, accepted response) of the selected experiences: the experience's trigger, and
the other logged requests that had it in their prompt and went well. The student is the base
model plus a LoRA adapter that sees the bare request; under `kd` the teacher is the same base model
(adapter disabled) reading the request with its retrieved experiences, and the student learns the
teacher's distribution over the response tokens (context distillation).

A job accumulates (`model/lineage.py`): it trains on from the tenant's active adapter on the experiences no
adapter of its lineage covers, plus a replay sample of those it does; the gate also checks the lineage's
earlier held-out slices, so that a new adapter that forgets what the active one knew is not promoted.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from logmem.memory import ConfigError, VectorMemory
from logmem.memory.store import ExperienceData
from tqdm import tqdm

from .config import ConsolidationConfig, GeneratorConfig
from .lineage import Plan, forgetting_check, plan_job, replay_sample, slice_sample
from .loading import load_adapter
from .modes import (
    ADAPTER_MODES,
    AUTO,
    MEMORY_MODES,
    HeldOut,
    beats,
    best_mode,
    measure,
    memory_nll,
    prepare_held_out,
    served_mode,
)
from .objectives import consolidation_loss, dpo_loss, sequence_logprobs
from .progress import Report
from .prompting import chat_ids, render_messages, select
from .scoring import nll_per_token, response_logits

logger = logging.getLogger(__name__)
PROBE = Path(__file__).parent / "probe" / "general.txt"


@dataclass
class Pair:
    """One training example: the student's prompt, the teacher's prompt, the response tokens, and the
    tokens of the answer a correction rejected (for the DPO term; None when there is none)."""

    experience_id: int
    student: list[int]
    teacher: list[int]
    response: list[int]
    rejected: list[int] | None = None


@dataclass
class Outcome:
    """What a consolidation run produced."""

    promoted: bool
    metrics: dict[str, Any]
    covered: list[int]  # experience ids this job trained on (new and replayed)
    holdout: list[int]
    adapter: Any = field(repr=False, default=None)  # the peft model (base + trained adapter)
    parent: str | None = None  # the adapter version it was trained on from (None: the base model)
    erase: bool = False  # it replaces a lineage that held forgotten experiences (their weights go once promoted)


def select_experiences(memory: VectorMemory, tenant: str, config: ConsolidationConfig) -> list[ExperienceData]:
    """The experiences a job teaches anew: those whose utility and support pass the thresholds and that the
    active adapter's lineage neither covers nor holds out (all of them when the job retrains from the base)."""
    return plan_job(memory, tenant, config).new


def split_holdout(experiences: Sequence[ExperienceData], config: ConsolidationConfig
                  ) -> tuple[list[ExperienceData], list[ExperienceData]]:
    """(train, holdout), a seeded shuffle; the holdout is at least one experience."""
    order = list(experiences)
    random.Random(config.seed).shuffle(order)
    n = min(config.max_holdout, max(1, round(len(order) * config.holdout)))
    return order[n:], order[:n]


def build_pairs(experiences: Sequence[ExperienceData], tokenizer: Any, memory: VectorMemory | None, tenant: str,
                config: ConsolidationConfig, progress: bool = False,
                extra: dict[int, list[str]] | None = None) -> list[Pair]:
    """Token ids of each experience's student prompt, teacher prompt (retrieved experiences, the
    experience itself left out) and response (end token included); one pair for its trigger and one for
    each request in `extra[experience id]` (other requests that used it and went well). With a DPO term,
    the trigger's pair also carries the answer its correction rejected."""
    gen_config = GeneratorConfig(k=config.teacher_k)
    need_teacher = config.method != "sft" or bool(config.with_memory)
    extra = extra or {}
    pairs, cut = [], 0

    def answer(text: str) -> list[int]:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
        return ids[: config.max_length - 1]

    for e in tqdm(experiences, desc="pairs", unit="ex", disable=not progress):
        response = answer(e.response)
        rejected = answer(e.rejected) if config.dpo_weight and e.rejected else None
        keep = max(config.max_length - max(len(response), len(rejected or [])), 1)
        for n, request in enumerate([e.trigger, *extra.get(e.id, [])]):
            question = [{"role": "user", "content": request}]
            bare = chat_ids(tokenizer, question)
            teacher = bare
            if need_teacher and memory is not None:
                hits = [h for h in memory.search(request, config.teacher_k + 1, tenant=tenant) if h.id != e.id]
                cond = select(hits[: config.teacher_k], tokenizer, gen_config)
                teacher = chat_ids(tokenizer, render_messages(question, cond, gen_config.template))
            student = teacher if config.with_memory else bare
            cut += len(teacher) > keep or len(student) > keep
            pairs.append(Pair(e.id, student[-keep:], teacher[-keep:], response, rejected if n == 0 else None))
    if cut:
        logger.warning("%d of %d training prompts are longer than max_length=%d and lose their start "
                       "(system prompt, first experiences); raise max_length", cut, len(pairs), config.max_length)
    return pairs


def _batches(pairs: Sequence[Pair], size: int, rng: random.Random) -> list[list[Pair]]:
    """Batches of similar length (less padding), in a seeded random order."""
    ordered = sorted(pairs, key=lambda p: len(p.student) + len(p.response))
    batches = [list(ordered[i:i + size]) for i in range(0, len(ordered), size)]
    rng.shuffle(batches)
    return batches


def _chunks(batch: Sequence[Pair], max_tokens: int) -> list[list[Pair]]:
    """`batch` split, in order, into runs of rows whose padded size (rows x widest row, teacher included)
    stays within `max_tokens`; a row wider than that is a chunk of its own."""
    chunks: list[list[Pair]] = []
    width = 0
    for p in batch:
        w = max(len(p.student), len(p.teacher)) + max(len(p.response), len(p.rejected or []))
        if chunks and (len(chunks[-1]) + 1) * max(width, w) <= max_tokens:
            chunks[-1].append(p)
            width = max(width, w)
        else:
            chunks.append([p])
            width = w
    return chunks


def _preference_loss(peft_model: Any, chunk: Sequence[Pair], student: torch.Tensor, targets: torch.Tensor,
                     config: ConsolidationConfig, pad: int) -> torch.Tensor:
    """DPO over the pairs of `chunk` that carry a rejected answer; `student`/`targets` are the chunk's
    accepted-response logits and tokens (reused as the policy's side of the accepted answers)."""
    lengths = [len(p.response) for p in chunk]
    keep = [i for i, p in enumerate(chunk) if p.rejected is not None]
    prefs = [chunk[i] for i in keep]
    chosen = sequence_logprobs(student, targets, lengths)[keep]
    logits, tokens = response_logits(peft_model, [(p.student, p.rejected or []) for p in prefs], pad)
    rejected = sequence_logprobs(logits, tokens, [len(p.rejected or []) for p in prefs])
    with torch.no_grad(), peft_model.disable_adapter():
        rows = [(p.student, p.response) for p in prefs] + [(p.student, p.rejected or []) for p in prefs]
        logits, tokens = response_logits(peft_model, rows, pad)
        ref = sequence_logprobs(logits, tokens, [len(r) for _, r in rows])
    return dpo_loss(chosen, rejected, ref[: len(prefs)], ref[len(prefs):], config.dpo_beta)


def step_gradients(peft_model: Any, batch: Sequence[Pair], config: ConsolidationConfig, pad: int) -> float:
    """Back-propagate the loss of one step's `batch`, chunk by chunk (`config.max_tokens`); returns the loss.

    Every objective is a mean over response tokens, so a chunk's loss weighs in by its share of the tokens,
    and the DPO term (a mean over preference pairs) by its share of those: the gradients add up to those of
    the whole batch in one pass.
    """
    total = sum(len(p.response) for p in batch)
    prefs = sum(p.rejected is not None for p in batch) if config.dpo_weight else 0
    loss = 0.0
    for chunk in _chunks(batch, config.max_tokens):
        teacher = None
        if config.method != "sft":
            with torch.no_grad(), peft_model.disable_adapter():
                teacher, _ = response_logits(peft_model, [(p.teacher, p.response) for p in chunk], pad)
        student, targets = response_logits(peft_model, [(p.student, p.response) for p in chunk], pad)
        part = consolidation_loss(config.method, student, targets, teacher, kd_weight=config.kd_weight,
                                  temperature=config.temperature) * (targets.numel() / total)
        share = sum(p.rejected is not None for p in chunk) / prefs if prefs else 0.0
        if share:
            part = part + config.dpo_weight * share * _preference_loss(peft_model, chunk, student, targets,
                                                                        config, pad)
        part.backward()
        loss += part.item()
    return loss


def attach_adapter(model: Any, config: ConsolidationConfig, start: str | Path | None = None) -> Any:
    """`model` (changed in place) with a trainable LoRA adapter: the one saved at `start`, to train on from it,
    or a fresh one (seeded)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if start is not None:
        return PeftModel.from_pretrained(model, str(start), is_trainable=True)
    torch.manual_seed(config.seed)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    modules = [m for m in config.target_modules if m in present]
    if not modules:
        raise ConfigError(f"none of the LoRA target modules {config.target_modules} is in the model")
    return get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                            target_modules=modules, task_type="CAUSAL_LM"))


def train_adapter(model: Any, tokenizer: Any, pairs: Sequence[Pair], config: ConsolidationConfig,
                  report: Report | None = None, progress: bool = False) -> Any:
    """Train `model`'s LoRA adapter on `pairs` (a plain model gets a fresh one first); returns the peft model."""
    from peft import PeftModel

    peft_model = model if isinstance(model, PeftModel) else attach_adapter(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate(config), weight_decay=0.0)
    rng = random.Random(config.seed)
    plan = [b for _ in range(config.epochs) for b in _batches(pairs, config.batch_size, rng)]
    if config.max_steps:
        plan = plan[: config.max_steps]
    pad = tokenizer.pad_token_id
    peft_model.train()
    bar = tqdm(plan, desc=f"consolidate ({config.method})", unit="step", disable=not progress)
    for step, batch in enumerate(bar, start=1):
        optimizer.zero_grad(set_to_none=True)
        loss = step_gradients(peft_model, batch, config, pad)
        optimizer.step()
        bar.set_postfix(loss=f"{loss:.3f}")
        if report is not None:
            report(step / len(plan), f"step {step}/{len(plan)} loss {loss:.4f}")
    peft_model.eval()
    return peft_model


def response_nll(model: Any, pairs: Sequence[Pair], pad: int, batch_size: int = 16) -> float:
    """Mean negative log-likelihood per response token of `pairs` given their student prompts."""
    return nll_per_token(model, [(p.student, p.response) for p in pairs], pad, batch_size)


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


def consolidate(model: Any, tokenizer: Any, memory: VectorMemory, *, tenant: str = "default",
                config: ConsolidationConfig | None = None, report: Report | None = None,
                progress: bool = False, experiences: Sequence[ExperienceData] | None = None) -> Outcome:
    """Plan (model/lineage.py), split, train on from the active adapter, gate. `model` is changed in place (the
    adapter is injected into it). The caller saves and registers the adapter (`Outcome.adapter`).

    `experiences` replaces the plan's new experiences (the lineage still gives the parent and the replay).
    """
    config = _lineage_kind(memory, tenant, config or ConsolidationConfig())
    started = time.perf_counter()
    plan = plan_job(memory, tenant, config)
    chosen = list(experiences) if experiences is not None else plan.new
    if len(chosen) < 2:
        raise ConfigError(f"tenant {tenant!r} has {len(chosen)} experience(s) to consolidate; at least 2 are needed")
    train, held = split_holdout(chosen, config)
    held_out = None
    if config.with_memory is None or config.gate_reference == "served":
        held_out = prepare_held_out(held, tokenizer, memory, tenant, GeneratorConfig(k=config.teacher_k),
                                    max_length=config.max_length)
    choice: dict[str, Any] = {}
    if held_out is not None and config.with_memory is None:
        config, choice = choose_student(model, tokenizer, held_out, config)
    replay = replay_sample(plan.replay_pool, len(train), config)
    pad = tokenizer.pad_token_id
    taught = sorted(train + replay, key=lambda e: e.id)
    train_pairs = build_pairs(taught, tokenizer, memory, tenant, config, progress,
                              extra=memory.went_well(taught, tenant=tenant))
    held_pairs = build_pairs(held, tokenizer, memory, tenant, config, progress)
    slices = {v: build_pairs(s, tokenizer, memory, tenant, config)
              for v, s in slice_sample(plan.slices, config).items()}
    base_nll, base_ppl = response_nll(model, held_pairs, pad), probe_perplexity(model, tokenizer)
    modes = _Modes(model, tokenizer, memory, tenant, held_out, config, progress) if held_out is not None \
        and config.gate_reference == "served" else None
    model, reference = _reference(model, plan, slices, config, pad, modes)
    adapter = train_adapter(model, tokenizer, train_pairs, config, report, progress)
    student_nll, student_ppl = response_nll(adapter, held_pairs, pad), probe_perplexity(adapter, tokenizer)
    serving: dict[str, Any] = {}
    if modes is None:
        promoted, reason = gate(base_nll, student_nll, base_ppl, student_ppl, config)
    else:
        promoted, reason = modes.judge(adapter, base_ppl, student_ppl)
    kept, why, forgetting = forgetting_check(reference, {v: response_nll(adapter, p, pad) for v, p in slices.items()},
                                             config)
    promoted, reason = (False, why) if promoted and not kept else (promoted, f"{reason}; {why}")
    if modes is not None:
        serving = modes.winner(promoted)
    parent = plan.parent.version if plan.parent is not None else None
    metrics = {"method": config.method, "with_memory": config.with_memory, "dpo_weight": config.dpo_weight,
               "parent": parent, "start": config.start, "restart": plan.restart,
               "train": len(train), "replay": len(replay), "train_pairs": len(train_pairs),
               "holdout": len(held_pairs), "base_nll": base_nll, "student_nll": student_nll,
               "lr": learning_rate(config), **({"student_choice": choice} if choice else {}),
               "base_probe_ppl": base_ppl, "student_probe_ppl": student_ppl, "forgetting": forgetting,
               "gate": reason, "seconds": round(time.perf_counter() - started, 1), "seed": config.seed,
               **({"serving": serving} if serving else {})}
    logger.info("consolidation %s: %s", "promoted" if promoted else "rejected", reason)
    return Outcome(promoted, metrics, [e.id for e in taught], [e.id for e in held], adapter, parent, plan.erase)


def learning_rate(config: ConsolidationConfig) -> float:
    """`config.lr`, or by default 5e-4 for a bare student and 2.5e-4 for a memory+adapter one."""
    if config.lr is not None:
        return config.lr
    return 2.5e-4 if config.with_memory else 5e-4


def _lineage_kind(memory: VectorMemory, tenant: str, config: ConsolidationConfig) -> ConsolidationConfig:
    """With the student left to the job, a job that trains on from the active adapter trains its kind (a change
    of kind would retrain from the base over every experience)."""
    active = memory.active_adapter(tenant)
    if config.with_memory is not None or config.rebuild or active is None or active.status == "stale":
        return config
    return replace(config, with_memory=bool(active.metrics.get("with_memory", False)))


def choose_student(model: Any, tokenizer: Any, held: HeldOut, config: ConsolidationConfig
                   ) -> tuple[ConsolidationConfig, dict[str, Any]]:
    """The student a job trains when nobody said: the memory+adapter student where the retrieved experiences
    lower the base model's response NLL on the held-out slice by more than `gate_margin` (the memory carries
    what the answers need, so a student that keeps reading it learns to use it: on NFCats it answered 0.927 of
    dev against the bare student's 0.869), the bare student otherwise (one prompt's worth of tokens per example,
    ~4x cheaper to train and to serve)."""
    figures = memory_nll(model, tokenizer, held)
    with_memory = figures["with_memory"] < figures["bare"] * (1.0 - config.gate_margin)
    reason = (f"held-out response NLL of the base model {figures['bare']:.4f} bare, {figures['with_memory']:.4f} "
              f"with the memory: {'a memory+adapter' if with_memory else 'a bare'} student")
    logger.info("consolidation of %d held-out experiences: %s", len(held.experiences), reason)
    return replace(config, with_memory=with_memory), {**figures, "with_memory_student": with_memory, "reason": reason}


def _reference(model: Any, plan: Plan, slices: dict[str, list[Pair]], config: ConsolidationConfig,
               pad: int, modes: _Modes | None = None) -> tuple[Any, dict[str, float]]:
    """(the model to train, the active adapter's NLL on each earlier held-out slice). Training on from the active
    adapter, its weights are loaded once, trainable, and measured before they move; a fresh LoRA measures
    the active adapter first and unloads it. With `modes`, the active adapter's modes are measured too."""
    if plan.reference is None:
        return model, {}
    continued = plan.parent is not None
    if not continued and not slices and modes is None:
        return model, {}
    loaded = attach_adapter(model, config, plan.reference.path) if continued else load_adapter(
        model, plan.reference.path)
    reference = {v: response_nll(loaded, p, pad) for v, p in slices.items()}
    if modes is not None:
        modes.measure_active(loaded, plan.reference.version)
    return (loaded if continued else loaded.unload()), reference


class _Modes:
    """A job's measurement of the serving modes on its held-out slice (model/modes.py): the base model's memory
    and vote, the active adapter's modes, the student's; the gate against the served one; the winner."""

    def __init__(self, model: Any, tokenizer: Any, memory: VectorMemory, tenant: str, held: HeldOut,
                 config: ConsolidationConfig, progress: bool) -> None:
        self.tokenizer, self.config, self.progress = tokenizer, config, progress
        self.gen_config = GeneratorConfig(k=config.teacher_k)
        self.held = held
        self.metric = self.held.metric
        self.served = served_mode(memory, tenant)
        self.base = self._measure(model, MEMORY_MODES)
        self.active: dict[str, float] = {}
        self.active_version: str | None = None
        self.student: dict[str, float] = {}

    def _measure(self, model: Any, modes: Sequence[str]) -> dict[str, float]:
        return measure(model, self.tokenizer, self.held, modes, self.gen_config, progress=self.progress)

    def measure_active(self, loaded: Any, version: str) -> None:
        self.active, self.active_version = self._measure(loaded, ADAPTER_MODES), version

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
        self.student = self._measure(adapter, ADAPTER_MODES)
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
