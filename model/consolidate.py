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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from logmem.memory import ConfigError, VectorMemory
from logmem.memory.store import ExperienceData

from .config import ConsolidationConfig, GeneratorConfig
from .gate import HeldOutNll, ServingGate, choose_student, gate, probe_perplexity, student_prompts
from .lineage import Plan, forgetting_check, plan_job, replay_sample, slice_sample
from .loading import load_adapter
from .modes import prepare_held_out
from .pairs import Pair, build_pairs, response_nll, split_holdout
from .progress import Report
from .training import attach_adapter, learning_rate, train_adapter

__all__ = ["ConsolidationConfig", "Outcome", "consolidate"]

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a consolidation run produced."""

    promoted: bool
    metrics: dict[str, Any]
    covered: list[int]  # experience ids the adapter was trained on (new and replayed; not those its steps after the
    # kept one, or after an early stop, would have taught)
    holdout: list[int]
    adapter: Any = field(repr=False, default=None)  # the peft model (base + trained adapter)
    parent: str | None = None  # the adapter version it was trained on from (None: the base model)
    erase: bool = False  # it replaces a lineage that held forgotten experiences (their weights go once promoted)


def consolidate(model: Any, tokenizer: Any, memory: VectorMemory, *, tenant: str = "default",
                config: ConsolidationConfig | None = None, report: Report | None = None,
                progress: bool = False, experiences: Sequence[ExperienceData] | None = None) -> Outcome:
    """Plan (model/lineage.py), split, train on from the active adapter, gate. Training measures the student on the
    held-out slice as it goes, keeps its best weights and stops when they stop improving or one more step and its
    measurement would end past `config.max_seconds` since the job started (`train_adapter`); each held-out NLL
    figure is measured once (`HeldOutNll`). `model` is changed in place (the adapter is injected into it). The
    caller saves and registers the adapter (`Outcome.adapter`).

    `experiences` replaces the plan's new experiences (the lineage still gives the parent and the replay).
    """
    config = _lineage_kind(memory, tenant, config or ConsolidationConfig())
    started = time.perf_counter()
    plan = plan_job(memory, tenant, config)
    chosen = list(experiences) if experiences is not None else plan.new
    if len(chosen) < 2:
        raise ConfigError(f"tenant {tenant!r} has {len(chosen)} experience(s) to consolidate; at least 2 are needed")
    train, held = split_holdout(chosen, config)
    reading = GeneratorConfig(k=config.teacher_k)
    held_out = prepare_held_out(held, tokenizer, memory, tenant, reading, max_length=config.max_length)
    nll = HeldOutNll(held_out, tokenizer, reading, progress=progress)
    choice: dict[str, Any] = {}
    if config.with_memory is None:
        config, choice = choose_student(model, tokenizer, held_out, config, nll)
    prompts = student_prompts(config)
    replay = replay_sample(plan.replay_pool, len(train), config)
    pad = tokenizer.pad_token_id
    taught = sorted(train + replay, key=lambda e: e.id)
    train_pairs = build_pairs(taught, tokenizer, memory, tenant, config, progress,
                              extra=memory.went_well(taught, tenant=tenant))
    slices = {v: build_pairs(s, tokenizer, memory, tenant, config)
              for v, s in slice_sample(plan.slices, config).items()}
    base_nll, base_ppl = nll(model, "base", prompts), probe_perplexity(model, tokenizer)
    modes = ServingGate(model, tokenizer, memory, tenant, held_out, config, progress, nll) \
        if config.gate_reference == "served" else None
    model, reference = _reference(model, plan, slices, config, pad, modes)
    adapter, run = train_adapter(model, tokenizer, train_pairs, config, report, progress,
                                 held_out=lambda m, step: nll.during(m, f"step {step}", prompts),
                                 deadline=started + config.max_seconds if config.max_seconds else None)
    nll.same("student", f"step {run.best_step or run.steps}")
    student_nll, student_ppl = nll(adapter, "student", prompts), probe_perplexity(adapter, tokenizer)
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
    covered = [e.id for e in taught if e.id in run.taught]  # what the job did not reach, the next one teaches
    metrics = {"method": config.method, "with_memory": config.with_memory, "dpo_weight": config.dpo_weight,
               "parent": parent, "start": config.start, "restart": plan.restart,
               "train": len(train), "replay": len(replay), "train_pairs": len(train_pairs), "covered": len(covered),
               "holdout": len(held), "base_nll": base_nll, "student_nll": student_nll,
               "lr": learning_rate(config), **({"student_choice": choice} if choice else {}), **run.to_json(),
               "base_probe_ppl": base_ppl, "student_probe_ppl": student_ppl, "forgetting": forgetting,
               "gate": reason, "seconds": round(time.perf_counter() - started, 1), "seed": config.seed,
               **({"serving": serving} if serving else {})}
    logger.info("consolidation %s: %s", "promoted" if promoted else "rejected", reason)
    return Outcome(promoted, metrics, covered, [e.id for e in held], adapter, parent, plan.erase)


def _lineage_kind(memory: VectorMemory, tenant: str, config: ConsolidationConfig) -> ConsolidationConfig:
    """With the student left to the job, a job that trains on from the active adapter trains its kind (a change
    of kind would retrain from the base over every experience)."""
    active = memory.active_adapter(tenant)
    if config.with_memory is not None or config.rebuild or active is None or active.status == "stale":
        return config
    return replace(config, with_memory=bool(active.metrics.get("with_memory", False)))


def _reference(model: Any, plan: Plan, slices: dict[str, list[Pair]], config: ConsolidationConfig,
               pad: int, modes: ServingGate | None = None) -> tuple[Any, dict[str, float]]:
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
