"""The serving mode: how a tenant is answered when a request names no mode, chosen by measurement.

Four modes answer from the same logs: `memory` (the base model reading the retrieved experiences, free
generation), `vote` (the answer the memory supports that the model reading them scores best: `model/voting.py`),
`consolidated` (the tenant's adapter, no memory in the prompt) and `memory+adapter` (both). Which is best
depends on the tenant (a 135M model reading its neighbours trails their vote on label-like logs; an adapter can
beat both, or forget what the logs' format asks), so a consolidation job measures them all on its held-out
slice and records the winner (`VectorMemory.record_serving_mode`); an operator may pin one instead. Before any
job measured, a tenant is served `auto`: the vote where its answers repeat, free generation where they do not.

A figure is the accuracy of the answers on the held-out experiences where answers are label-like (they repeat:
`VectorMemory.answer_repetition` >= `GeneratorConfig.auto_repetition`), else the response NLL per token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from logmem.memory import Hit, VectorMemory
from logmem.memory.store import ExperienceData
from logmem.memory.vocabulary import ADAPTER_MODES, AUTO, MEMORY_MODES, PREFERENCE, SERVING_MODES

from .config import GeneratorConfig
from .prompting import chat_ids, render_messages, select
from .reading import HeldOut, HeldOutNll

logger = logging.getLogger(__name__)
__all__ = ["ADAPTER_MODES", "AUTO", "MEMORY_MODES", "PREFERENCE", "SERVING_MODES", "HeldOut", "ServedMode",
           "best_mode", "beats", "explained_mode", "measure", "prepare_held_out", "served_mode"]


@dataclass(frozen=True)
class ServedMode:
    """What answers a tenant by default, and why."""

    mode: str  # "auto" or one of SERVING_MODES
    adapter: str | None  # the adapter version an adapter mode answers with (None: the base model)
    source: str  # "pinned" (an operator), "measured" (a consolidation job) or "default" (nothing measured)
    reason: str
    metric: str | None = None  # what the figures are: "accuracy" or "nll" (None: nothing measured)
    figures: dict[str, float] = field(default_factory=dict)  # mode -> the deciding job's figure over its slices
    # each held-out slice the deciding job chose over: its name, size, traffic weight and figure per mode
    # (`explained_mode` reads them; `served_mode`, on every answer's path, leaves them out)
    slices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def uses_memory(self) -> bool:
        return self.mode != "consolidated"

    @property
    def choose(self) -> str:
        """The generator's `choose` for this mode's memory side."""
        return {"vote": "vote", AUTO: "auto"}.get(self.mode, "off")

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def served_mode(memory: VectorMemory, tenant: str) -> ServedMode:
    """The tenant's serving mode: an operator's pin; else what its latest job measured, while the adapter it was
    measured with is still the active one; else `memory+adapter` with an active adapter no job measured (as
    served before modes were measured), or `auto`."""
    row = memory.serving_mode(tenant)
    active = memory.active_adapter(tenant)
    version = active.version if active is not None else None
    figures = dict(row.figures) if row is not None else {}
    metric = row.metric if row is not None else None
    if row is not None and row.pinned:
        if row.pinned in ADAPTER_MODES and version is None:
            return ServedMode(AUTO, None, "default", f"pinned to {row.pinned}, but tenant {tenant!r} has no active "
                                                     "adapter: the vote where answers repeat, else free generation",
                              metric, figures)
        return ServedMode(row.pinned, version if row.pinned in ADAPTER_MODES else None, "pinned",
                          f"pinned by an operator (measured best: {row.mode or 'nothing yet'})", metric, figures)
    if row is not None and row.mode and row.adapter == version:
        return ServedMode(row.mode, version if row.mode in ADAPTER_MODES else None, "measured", row.reason, metric,
                          figures)
    if version is not None:
        return ServedMode("memory+adapter", version, "default",
                          f"adapter {version} is active and no job has measured the modes with it", metric, figures)
    return ServedMode(AUTO, None, "default", "no consolidation job has measured the modes yet: the vote where "
                                            "answers repeat, free generation where they do not", metric, figures)


def explained_mode(memory: VectorMemory, tenant: str) -> ServedMode:
    """`served_mode` with the figures of every held-out slice its deciding job chose over (model/slices.py), read
    from that job's adapter row: for `logmem mode` and the inspector."""
    served = served_mode(memory, tenant)
    row = memory.serving_mode(tenant)
    if row is None or row.job_version is None:
        return served
    job = next((a for a in memory.adapters(tenant) if a.version == row.job_version), None)
    slices = (job.metrics.get("serving") or {}).get("slices", []) if job is not None else []
    return replace(served, slices=list(slices))


def beats(candidate: float, reference: float, metric: str, margin: float) -> bool:
    """Whether `candidate` is better than `reference` by more than `margin` (accuracy: points up; nll: the
    fraction it drops by)."""
    if metric == "accuracy":
        return candidate > reference + margin
    return candidate < reference * (1.0 - margin)


def best_mode(figures: dict[str, float], metric: str) -> str:
    """The mode with the best figure; on a tie the cheaper one (the vote, then memory, then the adapter modes)."""
    if not figures:
        raise ValueError("no figures to choose a mode from")
    sign = 1.0 if metric == "accuracy" else -1.0
    return max(figures, key=lambda m: (sign * figures[m], -PREFERENCE.index(m)))


def left_out_search(memory: VectorMemory, experience: ExperienceData, k: int, tenant: str) -> list[Hit]:
    """What a request with `experience`'s trigger retrieves (`k` hits), the experience itself left out."""
    return [h for h in memory.search(experience.trigger, k + 1, tenant=tenant) if h.id != experience.id][:k]


def prepare_held_out(held: Sequence[ExperienceData], tokenizer: Any, memory: VectorMemory, tenant: str,
                     config: GeneratorConfig, *, max_length: int = 1024) -> HeldOut:
    """The prompts of `held` in every mode, under the serving generator's retrieval and template (`config`)."""
    label_like = memory.answer_repetition(tenant) >= config.auto_repetition
    bare, with_memory, conds, responses = [], [], [], []
    for e in held:
        question = [{"role": "user", "content": e.trigger}]
        hits = left_out_search(memory, e, config.k, tenant)
        cond = select(hits, tokenizer, config)
        bare.append(chat_ids(tokenizer, question)[-max_length:])
        with_memory.append(chat_ids(tokenizer, render_messages(question, cond, config.template))[-max_length:])
        conds.append(cond)
        responses.append(list(tokenizer(e.response, add_special_tokens=False)["input_ids"])[: max_length - 1]
                         + [tokenizer.eos_token_id])
    return HeldOut(list(held), bare, with_memory, conds, responses, "accuracy" if label_like else "nll")


def measure(model: Any, tokenizer: Any, held: HeldOut, modes: Sequence[str], config: GeneratorConfig, *,
            progress: bool = False) -> dict[str, float]:
    """Each mode's figure on the held-out slice, answered by `model` (the base for memory and vote, the adapter
    for the adapter modes: the caller passes the right one), each kind of prompt read once (model/reading.py).
    Under "nll" the vote is not measured: on answers that do not repeat, `auto` generates freely (the memory
    figure)."""
    return HeldOutNll(held, tokenizer, config, progress=progress).figures(model, "model", modes)
